/* Multiboot kernels' toolkit: command line, TSC calibration, the LAPIC watchdog tick. See mb.h. */
#include "mb.h"

static const char *cmdline = "";

void mb_args(const struct mb_info *mbi)
{
    if ((mbi->flags & (1 << 2)) && mbi->cmdline)
        cmdline = (const char *)(u64)mbi->cmdline;
}

const char *mb_cmdline(void)
{
    return cmdline;
}

static int word_is(const char *w, const char *name) /* w starts a word ending at ' ', '=' or NUL */
{
    while (*name && *w == *name) {
        w++;
        name++;
    }
    return !*name && (*w == 0 || *w == ' ' || *w == '=');
}

const char *mb_arg(const char *name)
{
    const char *p = cmdline;
    while (*p && *p != ' ') /* the first word is the kernel's path */
        p++;
    while (*p) {
        while (*p == ' ')
            p++;
        if (word_is(p, name)) {
            while (*p && *p != ' ' && *p != '=')
                p++;
            return *p == '=' ? p + 1 : p;
        }
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

int mb_arg_is(const char *name, const char *value)
{
    const char *v = mb_arg(name);
    if (!v)
        return 0;
    while (*value && *v == *value) {
        v++;
        value++;
    }
    return !*value && (*v == 0 || *v == ' ');
}

int mb_list_has(const char *list, const char *key)
{
    if (!list)
        return 1;
    for (const char *p = list; *p && *p != ' ';) {
        const char *k = key;
        while (*k && *p == *k) {
            p++;
            k++;
        }
        if (!*k && (*p == ',' || *p == ' ' || !*p))
            return 1;
        while (*p && *p != ',' && *p != ' ')
            p++;
        if (*p == ',')
            p++;
    }
    return 0;
}

u64 mb_arg_num(const char *name, u64 dflt)
{
    const char *s = mb_arg(name);
    if (!s || *s < '0' || *s > '9')
        return dflt;
    u64 v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (u64)(*s++ - '0');
    if (*s == 'K')
        v <<= 10;
    else if (*s == 'M')
        v <<= 20;
    else if (*s == 'G')
        v <<= 30;
    return v;
}

/* -- time ----------------------------------------------------------------------------------- */
u64 tsc_hz = 3000000000UL; /* until calibrated: a guess, good enough for time-outs */

#define PIT_HZ 1193182
#define PIT_LATCH (PIT_HZ / 20) /* 50 ms: the longest window a 16-bit count allows is 54.9 ms */

static u64 pit_window_ticks(void)
{
    /* PIT channel 2 in mode 0, gate on, speaker off: OUT2 (port 0x61 bit 5) rises after the count. */
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01));
    outb(0x43, 0xb0);
    outb(0x42, PIT_LATCH & 0xff);
    outb(0x42, PIT_LATCH >> 8);
    u64 start = rdtsc();
    for (u32 i = 0; i < 10000000 && !(inb(0x61) & 0x20); i++)
        ;
    u64 ticks = rdtsc() - start;
    return inb(0x61) & 0x20 ? ticks : 0;
}

/* The median of three 50 ms windows: a vCPU preempted at either edge of one window (shared host cores)
 * skews that window only. */
u64 tsc_calibrate(void)
{
    u64 t[3];
    for (int i = 0; i < 3; i++) {
        u64 v = pit_window_ticks();
        int j = i;
        for (; j > 0 && t[j - 1] > v; j--)
            t[j] = t[j - 1];
        t[j] = v;
    }
    if (t[1] > 1000)
        tsc_hz = t[1] * 20;
    return tsc_hz;
}

/* -- LAPIC timer tick ------------------------------------------------------------------------ */
#define LAPIC 0xfee00000UL
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)

static void tick(struct irq_frame *f)
{
    (void)f;
    lapic_eoi();
}

void mb_tick_start(void)
{
    set_handler(MB_TICK_VECTOR, tick);
    mmio_write32(LAPIC + LAPIC_TIMER_DIV, 0x3); /* divide by 16: KVM's 1 GHz APIC bus -> 62.5 MHz */
    mmio_write32(LAPIC + LAPIC_LVT_TIMER, MB_TICK_VECTOR | LVT_PERIODIC);
    mmio_write32(LAPIC + LAPIC_TIMER_INIT, 625000);
}

void mb_tick_stop(void)
{
    mmio_write32(LAPIC + LAPIC_LVT_TIMER, LVT_MASKED);
    mmio_write32(LAPIC + LAPIC_TIMER_INIT, 0);
}

/* boot.S calls ap_main on each application processor; kernels that start none need not define it. */
__attribute__((weak)) void ap_main(u32 index)
{
    (void)index;
}
