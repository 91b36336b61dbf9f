/* Multiboot platform test kernel: what QEMU's pc machine gives a test kernel besides the devices
 * mbtest.c drives -- the ACPI tables (RSDP in 0xE0000-0xFFFFF, RSDT/XSDT, FADT, FACS, MADT, MCFG), the
 * ACPI PM timer behind the FADT's PM_TMR_BLK (rate checked against the PIT-calibrated TSC, +-5 %) and
 * configuration mechanism #1 with the address latch's low two bits set (QEMU ORs them with the data
 * port's low bits, splitting unaligned accesses into bytes: see docs/pci.md). MCFG and HPET are
 * reported, not required (QEMU's pc machine has an HPET and no MCFG; broiler the reverse).
 *
 * Output: "ok N what" / "FAIL N what: got G want W" per check, facts as "acpi: ..." lines.
 * mb_main returns 0 when every check passed, else the number of the first failing check; boot.S
 * writes it to isa-debug-exit (status 2v+1). Command-line word "cf8probe" prints every low-bits
 * access instead of checking it (how docs/pci.md's table was measured under QEMU).
 *
 * Kept small: every CPL0 instruction is emulated (~1 us) on this host's KVM.
 *
 * build-with: lib/lib.c multiboot/lib/mb.c multiboot/lib/acpi.c
 */

#include "acpi.h"

#define PCI_ADDR        0xcf8
#define PCI_DATA        0xcfc
#define PIT_CH2         0x42
#define PIT_CMD         0x43
#define PORT_B          0x61            /* bit 0: channel 2 gate, bit 5: channel 2 output */
#define PIT_HZ          1193182UL
#define PM_TIMER_HZ     3579545UL

static void put_kv(const char *prefix, const char *key, u64 v, int hex)
{
    puts(prefix); puts(key); putc('=');
    if (hex) put_hex(v); else put_dec(v);
    putc('\n');
}

static int first_failure, check_no;

static void check(int ok, const char *what, u64 got, u64 want)
{
    ++check_no;
    if (ok) {
        puts("ok "); put_dec(check_no); putc(' '); puts(what); putc('\n');
        return;
    }
    puts("FAIL "); put_dec(check_no); putc(' '); puts(what);
    puts(": got "); put_hex(got); puts(" want "); put_hex(want); putc('\n');
    if (!first_failure)
        first_failure = check_no;
}
#undef CHECK_EQ /* the toolkit's exits at once; this kernel reports every check and exits with the first */
#define CHECK_EQ(what, got, want) do { u64 g_ = (got), w_ = (want); check(g_ == w_, what, g_, w_); } while (0)

static const char *cmdline = "";

static int has_word(const char *name)    /* any word after argv[0] equal to name */
{
    const char *p = cmdline;
    while (*p && *p != ' ') p++;
    while (*p) {
        while (*p == ' ') p++;
        const char *w = p, *n = name;
        while (*n && *w == *n) { w++; n++; }
        if (!*n && (*w == 0 || *w == ' ' || *w == '='))
            return 1;
        while (*p && *p != ' ') p++;
    }
    return 0;
}

/* boot.S wants these: no interrupts and no APs are used here. */
struct irq_frame;
void isr_dispatch(struct irq_frame *f) { (void)f; outl(0xf4, 0x7f); for (;;) __asm__ volatile("cli; hlt"); }
void ap_main(u32 index) { (void)index; }

/* ---- configuration mechanism #1 with the latch's low bits set --------------------------------- */
static u32 cf8_read(u32 latch, u32 port_off, int size)
{
    outl(PCI_ADDR, latch);
    u16 port = (u16)(PCI_DATA + port_off);
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}
static void cf8_write(u32 latch, u32 port_off, int size, u32 v)
{
    outl(PCI_ADDR, latch);
    u16 port = (u16)(PCI_DATA + port_off);
    if (size == 1) outb(port, (u8)v); else if (size == 2) outw(port, (u16)v); else outl(port, v);
}

/* Where byte i of a size-byte access at port 0xCFC + k lands with latch low bits l (QEMU's rule): an
 * access aligned in the window goes in one piece from l | k; an unaligned one byte by byte at l | (k + i). */
static u32 cf8_byte_offset(u32 l, u32 k, int size, int i)
{
    return k % (u32)size ? (l | (k + (u32)i)) : (l | k) + (u32)i;
}

/* 00:00.0 under both VMMs: the first 8 bytes (IDs, COMMAND, STATUS) read aligned are the reference. */
static void test_cf8_low_bits(int probe)
{
    u8 ref[8];
    u32 lo = cf8_read(0x80000000, 0, 4), hi = cf8_read(0x80000004, 0, 4);
    for (int i = 0; i < 4; i++) { ref[i] = (u8)(lo >> 8 * i); ref[4 + i] = (u8)(hi >> 8 * i); }
    int bad = 0;
    u64 first_bad = 0;
    for (u32 l = 0; l < 4; l++)
        for (u32 k = 0; k < 4; k++)
            for (int size = 1; size <= 4; size *= 2) {
                if (k + (u32)size > 4)
                    continue;
                u32 got = cf8_read(0x80000000 | l, k, size), want = 0;
                for (int i = 0; i < size; i++)
                    want |= (u32)ref[cf8_byte_offset(l, k, size, i)] << 8 * i;
                if (probe) {
                    puts("cf8: read latch_low="); put_dec(l); puts(" port=+"); put_dec(k);
                    puts(" size="); put_dec((u64)size); puts(" got="); put_hex(got);
                    puts(" qemu_rule="); put_hex(want); putc('\n');
                } else if (got != want && !bad++) {
                    first_bad = (u64)l << 16 | k << 8 | (u32)size;
                }
            }
    if (!probe)
        check(!bad, "config reads with latch low bits follow QEMU", first_bad, 0);
    /* Writes: interrupt line (0x3c) is the one writable byte of 00:00.0's header both VMMs share.
     * Write 0x44332211 as 1/2/4 bytes at latch 0x38|l, port +k: 0x3c keeps the last byte landing there. */
    for (u32 l = 0; l < 4; l++)
        for (u32 k = 0; k < 4; k++)
            for (int size = 1; size <= 4; size *= 2) {
                if (k + (u32)size > 4)
                    continue;
                cf8_write(0x8000003c, 0, 1, 0);
                cf8_write(0x80000038 | l, k, size, 0x44332211);
                u32 got = cf8_read(0x8000003c, 0, 1), want = 0;
                for (int i = 0; i < size; i++)
                    if ((0x38 | cf8_byte_offset(l, k, size, i)) == 0x3c)
                        want = (0x44332211u >> 8 * i) & 0xff;
                if (probe) {
                    puts("cf8: write latch_low="); put_dec(l); puts(" port=+"); put_dec(k);
                    puts(" size="); put_dec((u64)size); puts(" reg3c="); put_hex(got);
                    puts(" qemu_rule="); put_hex(want); putc('\n');
                } else if (got != want && !bad++) {
                    first_bad = (u64)l << 16 | k << 8 | (u32)size;
                }
            }
    cf8_write(0x8000003c, 0, 1, 0);
    if (!probe)
        check(!bad, "config writes with latch low bits follow QEMU", first_bad, 0);
    if (probe) {
        put_kv("cf8: ", "read4_latch_ff", cf8_read(0x800000ff, 0, 4), 1);
        put_kv("cf8: ", "read2_latch_fe_port3", cf8_read(0x800000fe, 3, 1), 1);
    }
}

/* ---- ACPI tables ------------------------------------------------------------------------------ */
/* A table by signature among the RSDT's entries, reported and its checksum checked; 0 if absent. */
static u64 report_table(u64 rsdt, const char *sig)
{
    u64 t = acpi_find_table(rsdt, sig);
    if (t) {
        puts("acpi: table "); puts(sig); puts(" at "); put_hex(t); putc('\n');
        check(acpi_table_ok(t, sig), sig, acpi_byte_sum((void *)t, acpi_u32(t + 4)), 0);
    }
    return t;
}

static u32 pm_timer_port;

static void test_acpi(void)
{
    u64 rsdp = acpi_find_rsdp();
    put_kv("acpi: ", "rsdp", rsdp, 1);
    check(rsdp != 0, "RSDP with a valid checksum in 0xE0000-0xFFFFF", 0, 1);
    if (!rsdp)
        return;
    u8 rev = *(u8 *)(rsdp + 15);
    put_kv("acpi: ", "rsdp_revision", rev, 0);
    if (rev >= 2) {
        check(acpi_byte_sum((void *)rsdp, acpi_u32(rsdp + 20)) == 0, "RSDP extended checksum", 0, 0);
        u64 xsdt = acpi_u32(rsdp + 24) | (u64)acpi_u32(rsdp + 28) << 32;
        check(acpi_table_ok(xsdt, "XSDT"), "XSDT signature and checksum", xsdt, 0);
    }
    u64 rsdt = acpi_u32(rsdp + 16);
    check(acpi_table_ok(rsdt, "RSDT"), "RSDT signature and checksum", rsdt, 0);
    u64 fadt = report_table(rsdt, "FACP"), madt = report_table(rsdt, "APIC");
    check(fadt && madt, "RSDT lists FACP and APIC", fadt, madt);
    if (report_table(rsdt, "MCFG") == 0) puts("acpi: no MCFG\n");
    if (report_table(rsdt, "HPET") == 0) puts("acpi: no HPET\n");
    if (fadt) {
        u64 facs = acpi_u32(fadt + 36), dsdt = acpi_u32(fadt + 40);
        check(facs && acpi_sig_is((void *)facs, "FACS", 4) && acpi_u32(facs + 4) >= 64, "FACS signature and length",
              facs, 0);
        check(acpi_table_ok(dsdt, "DSDT"), "DSDT signature and checksum", dsdt, 0);
        put_kv("acpi: ", "pm1a_evt", acpi_u32(fadt + 56), 1);
        put_kv("acpi: ", "pm1a_cnt", acpi_u32(fadt + 64), 1);
        pm_timer_port = acpi_u32(fadt + 76);
        put_kv("acpi: ", "pm_tmr", pm_timer_port, 1);
        u32 pm1a_evt = acpi_u32(fadt + 56), pm1a_cnt = acpi_u32(fadt + 64);
        check(pm1a_evt && *(u8 *)(fadt + 88) == 4, "FADT PM1a_EVT_BLK, PM1_EVT_LEN 4", pm1a_evt, 4);
        check(pm1a_cnt && *(u8 *)(fadt + 89) == 2, "FADT PM1a_CNT_BLK, PM1_CNT_LEN 2", pm1a_cnt, 2);
        check(pm_timer_port && pm_timer_port < 0x10000 && *(u8 *)(fadt + 91) == 4, "FADT PM_TMR_BLK, PM_TMR_LEN 4",
              pm_timer_port, 4);
    }
    if (madt) {
        int lapics = 0, ioapics = 0;
        put_kv("acpi: ", "madt_lapic_addr", acpi_u32(madt + 36), 1);
        for (u64 e = madt + 44; e + 2 <= madt + acpi_u32(madt + 4) && *(u8 *)(e + 1); e += *(u8 *)(e + 1)) {
            u8 type = *(u8 *)e;
            if (type == 0 && (acpi_u32(e + 4) & 1)) lapics++;
            if (type == 1 && acpi_u32(e + 4) == 0xfec00000) ioapics++;
        }
        put_kv("acpi: ", "madt_cpus", (u64)lapics, 0);
        CHECK_EQ("MADT local APIC address", acpi_u32(madt + 36), 0xfee00000);
        check(lapics >= 1 && ioapics == 1, "MADT: enabled local APICs and the IOAPIC at 0xFEC00000", (u64)lapics,
              (u64)ioapics);
    }
    }

/* ---- the PM timer against the TSC ------------------------------------------------------------- */
/* Each reading is bracketed by two rdtsc and the best of 8 (the narrowest bracket) is kept, so a vCPU
 * descheduled in the middle of a reading (this host is shared) does not skew the rates. */
struct sample { u64 value, tsc, width; };

static u32 read_pit_ch2(void)
{
    outb(PIT_CMD, 0x80);                         /* latch channel 2 */
    u32 lo = inb(PIT_CH2);
    return lo | (u32)inb(PIT_CH2) << 8;
}
static struct sample best_sample(int pm)
{
    struct sample best = { 0, 0, ~0UL };
    for (int i = 0; i < 8; i++) {
        u64 a = rdtsc();
        u64 v = pm ? inl((u16)pm_timer_port) : read_pit_ch2();
        u64 b = rdtsc();
        if (b - a < best.width)
            best = (struct sample){ v, a + (b - a) / 2, b - a };
    }
    return best;
}

static void test_pm_timer(void)
{
    if (!pm_timer_port)
        return;
    outb(PORT_B, (u8)((inb(PORT_B) & ~2) | 1));  /* channel 2 gate on, speaker off */
    outb(PIT_CMD, 0xb4);                         /* channel 2, lobyte/hibyte, mode 2, reload 65536 */
    outb(PIT_CH2, 0);
    outb(PIT_CH2, 0);
    struct sample pit0 = best_sample(0), pm0 = best_sample(1);
    while (((pit0.value - read_pit_ch2()) & 0xffff) < PIT_HZ * 30 / 1000)  /* 30 ms: well inside one wrap */
        ;
    struct sample pit1 = best_sample(0), pm1 = best_sample(1);
    u64 pit_ticks = (pit0.value - pit1.value) & 0xffff, pm_ticks = (pm1.value - pm0.value) & 0xffffff;
    u64 tsc_hz = (pit1.tsc - pit0.tsc) * PIT_HZ / (pit_ticks ? pit_ticks : 1);
    u64 rate = pm_ticks * tsc_hz / (pm1.tsc - pm0.tsc);
    put_kv("pmtimer: ", "tsc_hz", tsc_hz, 0);
    put_kv("pmtimer: ", "hz", rate, 0);
    put_kv("pmtimer: ", "widest_read_tsc", pm1.width > pit1.width ? pm1.width : pit1.width, 0);
    check((pm0.value >> 24) == 0 && (pm1.value >> 24) == 0, "PM timer is 24 bits (TMR_VAL_EXT clear)", pm1.value, 0);
    check(rate > PM_TIMER_HZ * 95 / 100 && rate < PM_TIMER_HZ * 105 / 100, "PM timer rate 3.579545 MHz +-5 % (TSC)",
          rate, PM_TIMER_HZ);
    u32 c = inl((u16)pm_timer_port);
    outl((u16)pm_timer_port, 0);                 /* read-only: the write changes nothing */
    check(((inl((u16)pm_timer_port) - c) & 0xffffff) < PM_TIMER_HZ, "PM timer keeps counting after a write", c, 0);
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    puts("mbplat: start\n");
    CHECK_EQ("EAX magic", magic, MB_BOOT_MAGIC);
    if (magic == MB_BOOT_MAGIC && (mbi->flags & 4) && mbi->cmdline)
        cmdline = (const char *)(u64)mbi->cmdline;
    test_acpi();
    test_pm_timer();
    test_cf8_low_bits(has_word("cf8probe"));
    puts(first_failure ? "mbplat: FAILED\n" : "mbplat: PASSED\n");
    return (u32)first_failure;
}
