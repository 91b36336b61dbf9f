/* HPET test kernel (Multiboot): runs unchanged under broiler (-k) and QEMU (-kernel).
 *
 * Checks, one "ok N ..." line each, facts as "hpet: ..." lines:
 *   - the ACPI HPET table (found through the RSDP's RSDT): checksum, base address 0xFED00000, and its
 *     event timer block ID equal to the low half of the capabilities register;
 *   - the capabilities: revision, a counter period of at most 100 ns (the spec's limit), three timers or
 *     more, legacy replacement; the main counter's rate against the PIT-calibrated TSC (+-5 %), and that
 *     it stops while ENABLE_CNF is clear;
 *   - a one-shot interrupt (timer 0, edge, legacy replacement -> IOAPIC pin 2) arriving once, not before
 *     the counter reached the comparator;
 *   - a periodic interrupt (timer 0, 1 ms): ten interrupts, none before its match (k + 1 periods);
 *   - where INT_ROUTE_CAP offers an IOAPIC input above 15 (broiler; QEMU's pc machine offers only 2): a
 *     level-triggered one-shot through Tn_INT_ROUTE (timer 2) with its status bit set, the handler
 *     clearing it (write 1) before its EOI. This host's KVM delivers such an interrupt a second time
 *     (issue 17; QEMU -M q35 shows the same): a second delivery is tolerated only with the status clear.
 * Legacy replacement is used for the IOAPIC pin 2 tests because QEMU's PIT (programmed by its BIOS) shares
 * that pin otherwise; QEMU stops the PIT in legacy replacement mode, broiler's in-kernel PIT is never
 * programmed here. Exit (isa-debug-exit): 0 when every check passed (status 1), else the number of the
 * first failing check at once; waits are bounded by TSC deadlines (a LAPIC tick wakes each hlt).
 *
 * build-with: lib/lib.c lib/irq.c multiboot/lib/mb.c multiboot/lib/acpi.c
 */
#include "acpi.h"

#define HPET 0xfed00000UL
#define GCAP_ID 0x000
#define GEN_CONF 0x010
#define GINTR_STA 0x020
#define MAIN_COUNTER 0x0f0
#define TN_CONF(n) (0x100 + 0x20 * (n))
#define TN_CMP(n) (0x108 + 0x20 * (n))
#define ENABLE_CNF 1u
#define LEG_RT_CNF 2u
#define TN_LEVEL (1u << 1)
#define TN_INT_ENB (1u << 2)
#define TN_PERIODIC (1u << 3)
#define TN_VAL_SET (1u << 6)
#define TN_ROUTE(gsi) ((u32)(gsi) << 9)
#define MAX_PERIOD_FS 100000000UL       /* 100 ns */
#define LEGACY_PIN 2
#define VEC_LEGACY 0x50
#define VEC_ROUTED 0x51
#define SPURIOUS_VECTOR 0xff
#define WAIT_MS 3000

static int check_no;

static void check(int ok, const char *what, u64 got, u64 want)
{
    ++check_no;
    if (ok) {
        printf("ok %d %s\n", check_no, what);
        return;
    }
    printf("FAIL %d %s: got %lx want %lx\n", check_no, what, got, want);
    exit((u32)check_no);                /* at once: the next steps depend on this one */
}

static u64 hpet_rd(u32 reg) { return mmio_read64(HPET + reg); }
static void hpet_wr(u32 reg, u64 v) { mmio_write64(HPET + reg, v); }

/* ---- the ACPI HPET table ------------------------------------------------------------------------ */
static void test_table(void)
{
    u64 rsdp = acpi_find_rsdp();
    u64 t = rsdp ? acpi_find_table(acpi_u32(rsdp + 16), "HPET") : 0;
    printf("hpet: table at %lx\n", t);
    check(t != 0, "RSDT lists an HPET table", t, 1);
    check(acpi_table_ok(t, "HPET") && *(u32 *)(t + 4) >= 56, "HPET table checksum and length",
          *(u32 *)(t + 4), 56);
    u64 base = *(u64 *)(t + 44);
    printf("hpet: table block_id=%x space=%u base=%lx number=%u min_tick=%u\n", *(u32 *)(t + 36), *(u8 *)(t + 40),
           base, *(u8 *)(t + 52), *(u16 *)(t + 53));
    check(*(u8 *)(t + 40) == 0 && base == HPET, "HPET table: base address 0xFED00000 in memory space", base, HPET);
    check(*(u32 *)(t + 36) == (u32)hpet_rd(GCAP_ID), "HPET table: event timer block ID = GCAP_ID[31:0]",
          *(u32 *)(t + 36), (u32)hpet_rd(GCAP_ID));
}

/* ---- capabilities and the counter --------------------------------------------------------------- */
/* The counter against the TSC, the TSC against PIT channel 2 over the same 30 ms window. Each reading is
 * bracketed by two rdtsc and the narrowest of 8 kept, so a vCPU descheduled mid-read (this host is
 * shared) does not skew the rates (as mbplat.c does for the PM timer). */
#define PIT_HZ 1193182UL
struct sample { u64 value, tsc, width; };

static u32 read_pit_ch2(void)
{
    outb(0x43, 0x80);                   /* latch channel 2 */
    u32 lo = inb(0x42);
    return lo | (u32)inb(0x42) << 8;
}

static struct sample best_sample(int hpet)
{
    struct sample best = { 0, 0, ~0UL };
    for (int i = 0; i < 8; i++) {
        u64 a = rdtsc();
        u64 v = hpet ? mmio_read64(HPET + MAIN_COUNTER) : read_pit_ch2();
        u64 b = rdtsc();
        if (b - a < best.width)
            best = (struct sample){ v, a + (b - a) / 2, b - a };
    }
    return best;
}

static u64 period_fs;

static void test_counter(void)
{
    u64 cap = hpet_rd(GCAP_ID);
    period_fs = cap >> 32;
    u32 timers = ((cap >> 8) & 0x1f) + 1;
    printf("hpet: cap=%lx rev=%lu timers=%u vendor=%lx period_fs=%lu count64=%lu legacy=%lu\n", cap, cap & 0xff,
           timers, (cap >> 16) & 0xffff, period_fs, (cap >> 13) & 1, (cap >> 15) & 1);
    for (u32 n = 0; n < 3; n++)
        printf("hpet: timer%u conf=%lx\n", n, hpet_rd(TN_CONF(n)));
    check((cap & 0xff) != 0 && timers >= 3 && (cap >> 15) & 1, "revision, 3+ timers, legacy replacement", cap, 0);
    check(period_fs && period_fs <= MAX_PERIOD_FS, "counter period <= 100 ns", period_fs, MAX_PERIOD_FS);
    hpet_wr(GEN_CONF, 0);
    hpet_wr(MAIN_COUNTER, 0);
    hpet_wr(GEN_CONF, ENABLE_CNF);
    outb(0x61, (u8)((inb(0x61) & ~2) | 1));  /* PIT channel 2: gate on, speaker off, mode 2, reload 65536 */
    outb(0x43, 0xb4);
    outb(0x42, 0);
    outb(0x42, 0);
    struct sample pit0 = best_sample(0), c0 = best_sample(1);
    while (((pit0.value - read_pit_ch2()) & 0xffff) < PIT_HZ * 30 / 1000)  /* 30 ms: inside one PIT wrap */
        ;
    struct sample pit1 = best_sample(0), c1 = best_sample(1);
    u64 pit_ticks = (pit0.value - pit1.value) & 0xffff;
    u64 window_tsc_hz = (pit1.tsc - pit0.tsc) * PIT_HZ / (pit_ticks ? pit_ticks : 1);
    u64 hz = (c1.value - c0.value) * window_tsc_hz / (c1.tsc - c0.tsc), want = 1000000000000000UL / period_fs;
    printf("hpet: tsc_hz=%lu counter_hz=%lu\n", window_tsc_hz, hz);
    check(hz > want * 95 / 100 && hz < want * 105 / 100, "counter rate = 1/period +-5 % (TSC)", hz, want);
    hpet_wr(GEN_CONF, 0);
    u64 halted = hpet_rd(MAIN_COUNTER);
    u64 t2 = rdtsc();
    while (rdtsc() - t2 < tsc_hz / 1000)
        ;
    check(hpet_rd(MAIN_COUNTER) == halted, "counter stops while ENABLE_CNF is clear", hpet_rd(MAIN_COUNTER), halted);
}

/* ---- interrupts --------------------------------------------------------------------------------- */
static volatile u32 legacy_irqs, routed_irqs, routed_status_each[4];
static volatile u64 legacy_at[16];

static void on_legacy(struct irq_frame *f)
{
    (void)f;
    if (legacy_irqs < 16)
        legacy_at[legacy_irqs] = hpet_rd(MAIN_COUNTER);
    legacy_irqs++;
    lapic_eoi();
}

static void on_routed(struct irq_frame *f)
{
    (void)f;
    u32 status = (u32)hpet_rd(GINTR_STA);
    if (routed_irqs < 4)
        routed_status_each[routed_irqs] = status;
    hpet_wr(GINTR_STA, 1u << 2);        /* lower the level first, then EOI */
    routed_irqs++;
    lapic_eoi();
}

static int wait_count(volatile u32 *counter, u32 target)
{
    u64 deadline = tsc_deadline_ms(WAIT_MS);
    while (*counter < target && !tsc_passed(deadline))
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    return *counter >= target;
}

static void settle(u32 ms)              /* interrupts on for a while: anything extra arrives now */
{
    u64 deadline = tsc_deadline_ms(ms);
    while (!tsc_passed(deadline))
        __asm__ volatile("sti; hlt; cli" ::: "memory");
}

static void test_legacy_one_shot_and_periodic(void)
{
    u64 ticks_1ms = 1000000000000UL / period_fs;
    hpet_wr(GEN_CONF, LEG_RT_CNF);      /* halted, legacy replacement: timer 0 -> pin 2, PIT off (QEMU) */
    hpet_wr(MAIN_COUNTER, 0);
    hpet_wr(TN_CONF(0), TN_INT_ENB);    /* edge, one-shot */
    hpet_wr(TN_CMP(0), 5 * ticks_1ms);
    ioapic_route(LEGACY_PIN, VEC_LEGACY, 0, (u8)lapic_id());
    hpet_wr(GEN_CONF, LEG_RT_CNF | ENABLE_CNF);
    int arrived = wait_count(&legacy_irqs, 1);
    settle(20);
    printf("hpet: one-shot at counter %lu (comparator %lu)\n", legacy_at[0], 5 * ticks_1ms);
    check(arrived && legacy_irqs == 1, "one-shot interrupt (timer 0, legacy, edge) arrives once", legacy_irqs, 1);
    check(legacy_at[0] >= 5 * ticks_1ms, "one-shot not before the comparator", legacy_at[0], 5 * ticks_1ms);

    hpet_wr(GEN_CONF, LEG_RT_CNF);
    legacy_irqs = 0;
    hpet_wr(MAIN_COUNTER, 0);
    hpet_wr(TN_CONF(0), TN_INT_ENB | TN_PERIODIC | TN_VAL_SET);
    hpet_wr(TN_CMP(0), ticks_1ms);      /* first match and period */
    hpet_wr(GEN_CONF, LEG_RT_CNF | ENABLE_CNF);
    arrived = wait_count(&legacy_irqs, 10);
    hpet_wr(TN_CONF(0), 0);
    /* The k-th interrupt (from 0) cannot come before the counter reached match k + 1 (k + 1 periods):
     * each match raises at most one, missed ones are skipped. Latency only makes them later. */
    int early = -1;
    for (int k = 9; k >= 0; k--)
        if (legacy_at[k] < (u64)(k + 1) * ticks_1ms)
            early = k;
    printf("hpet: periodic: %u interrupts, at counter %lu .. %lu (period %lu)\n", legacy_irqs, legacy_at[0],
           legacy_at[9], ticks_1ms);
    check(arrived, "periodic interrupt (timer 0, 1 ms): 10 arrive", legacy_irqs, 10);
    check(early < 0, "no periodic interrupt before its match", (u64)early, 0);
    ioapic_mask(LEGACY_PIN);
    hpet_wr(GEN_CONF, 0);
}

static void test_routed_level(void)
{
    u32 cap = (u32)(hpet_rd(TN_CONF(2)) >> 32);
    int pin = -1;
    for (int gsi = 23; gsi >= 16 && pin < 0; gsi--)
        if (cap >> gsi & 1)
            pin = gsi;
    if (pin < 0) {
        printf("hpet: no IOAPIC input above 15 in INT_ROUTE_CAP %x: routed level test skipped\n", cap);
        return;
    }
    u64 ticks_1ms = 1000000000000UL / period_fs;
    hpet_wr(MAIN_COUNTER, 0);
    hpet_wr(TN_CONF(2), TN_INT_ENB | TN_LEVEL | TN_ROUTE(pin));
    check((hpet_rd(TN_CONF(2)) >> 9 & 0x1f) == (u64)pin, "Tn_INT_ROUTE takes an offered input",
          hpet_rd(TN_CONF(2)) >> 9 & 0x1f, (u64)pin);
    hpet_wr(TN_CMP(2), 2 * ticks_1ms);
    ioapic_route((u8)pin, VEC_ROUTED, 1, (u8)lapic_id());
    hpet_wr(GEN_CONF, ENABLE_CNF);
    int arrived = wait_count(&routed_irqs, 1);
    settle(20);
    printf("hpet: routed level one-shot on IOAPIC pin %d: %u interrupts, status %x %x\n", pin, routed_irqs,
           routed_status_each[0], routed_status_each[1]);
    check(arrived && routed_status_each[0] & (1u << 2), "level one-shot (timer 2, Tn_INT_ROUTE), status bit set",
          routed_status_each[0], 4);
    /* This host's KVM delivers a level interrupt lowered before its EOI a second time, under QEMU too
     * (issue 17): tolerated, but only with the status already clear, and not a third time. */
    check(routed_irqs <= 2 && (routed_irqs < 2 || !(routed_status_each[1] & 4)),
          "no delivery with the status bit set after it was cleared", routed_irqs, 1);
    check((hpet_rd(GINTR_STA) & 4) == 0, "status cleared by writing 1", hpet_rd(GINTR_STA), 0);
    ioapic_mask((u8)pin);
    hpet_wr(GEN_CONF, 0);
}

static void spurious(struct irq_frame *f) { (void)f; }

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    puts("mbhpet: start\n");
    check(magic == MB_BOOT_MAGIC, "EAX magic", magic, MB_BOOT_MAGIC);
    mb_args(mbi);
    tsc_calibrate();
    idt_init();
    set_handler(SPURIOUS_VECTOR, spurious);
    set_handler(VEC_LEGACY, on_legacy);
    set_handler(VEC_ROUTED, on_routed);
    pic_init(0x20, 0x28);               /* every 8259 line masked: the HPET goes through the IOAPIC */
    lapic_init();
    mb_tick_start();
    test_table();
    test_counter();
    test_legacy_one_shot_and_periodic();
    test_routed_level();
    mb_tick_stop();
    puts("mbhpet: PASSED\n");
    return 0;
}
