/* Multiboot S3 test kernel: suspend to RAM through PM1a_CNT and resume through the FACS waking vector,
 * as a kvm-unit-tests style kernel does it under QEMU (SeaBIOS jumps to the vector in real mode).
 *
 * 1. Finds the RSDP, FADT (PM1a_EVT, PM1a_CNT), FACS and DSDT (checksums), and the SLP_TYP the DSDT's
 *    \_S3 package advertises.
 * 2. Copies boot.S's real-mode trampoline (the APs' way up to long mode) to WAKE_PAGE and writes that
 *    address to the FACS Firmware_Waking_Vector: on resume the BSP runs it (CS = 0x800, IP = 0) and
 *    arrives in ap_main like an AP would.
 * 3. Fills a 256 KiB buffer at 4 MiB with a pattern and keeps its sum (state that must survive: at 0x7000).
 * 4. Waits for an RTC update (register A's UIP set, then clear: kvm-unit-tests' s3 test waits the same
 *    way), sets the alarm to "now + 2 s" (hours and minutes don't care), AIE in register B and RTC_EN in
 *    PM1a_EN (QEMU wakes on the alarm only with it).
 * 5. Writes SLP_TYP | SLP_EN to PM1a_CNT. No instruction after that write may run: the next one marks
 *    the kernel as having run on (phase = PHASE_RAN_ON), which the resumed kernel reports.
 *    With "kut" it arms the way kvm-unit-tests' s3 test does: every alarm field "don't care" (the next
 *    second) and PM1a_EN never written (QEMU then sleeps until system_wakeup; broiler wakes it).
 *    With the command-line word "noalarm" none of this is armed: the kernel sleeps until the VMM's
 *    wake command (`broiler wakeup NAME`, QEMU's system_wakeup).
 * 6. Resumed (ap_main with phase == PHASE_ASLEEP): the buffer's sum, WAK_STS in PM1a_STS, the HPET
 *    (enabled just before the sleep) reset, the RTC clock
 *    at or past the alarm; then "mbs3: PASSED" and isa-debug-exit 0 (status 1), or the first failing
 *    check's number. A kernel that never wakes runs into the VMM's timeout.
 *
 * Kept small: every CPL0 instruction is emulated (~1 us) on this host's KVM.
 *
 * build-with: lib/lib.c multiboot/lib/mb.c multiboot/lib/acpi.c
 */

#include "acpi.h"

#define WAKE_PAGE       0x8000          /* conventional memory neither loader uses (boot.S) */
#define SLP_EN          (1 << 13)
#define WAK_STS         (1 << 15)
#define RTC_EN          (1 << 10)       /* PM1_EN; RTC_STS in PM1_STS */
#define RTC_INDEX       0x70
#define RTC_DATA        0x71
#define RTC_REG_A       0x0a
#define RTC_REG_B       0x0b
#define RTC_REG_C       0x0c
#define REG_A_UIP       0x80
#define REG_B_AIE       0x20
#define ALARM_DONT_CARE 0xc0
#define HPET_CONFIG     ((volatile u64 *)0xfed00010)  /* general configuration: bit 0 ENABLE_CNF */
#define IOAPIC_SEL      ((volatile u32 *)0xfec00000)
#define IOAPIC_WIN      ((volatile u32 *)0xfec00010)
#define IOAPIC_PIN9_LO  0x22                           /* redirection entry 9, low half (pin 9 unused here) */
#define PATTERN_WORDS   (256 * 1024 / 8)
#define PHASE_ASLEEP    0x51ee9u
#define PHASE_RAN_ON    0xdeadu

extern char ap_tramp[], ap_tramp_end[];

/* What must survive the sleep lives outside the kernel's image: QEMU writes a -kernel ELF's segments
 * back on every reset, S3 wake included (they are its ROM blobs), so .data and .bss come back as loaded. */
struct s3_state {
    u32 phase, pm1a_evt, pm1a_cnt, check_no, first_failure, no_alarm, kut;
    u64 pattern_sum, slept_at;          /* slept_at: RTC seconds of the day when the kernel slept */
};
#define STATE_ADDR      0x7000          /* below the trampoline's page */
#define PATTERN_ADDR    0x400000        /* 4 MiB: above the kernel and what the loaders put after it */
#define st              ((volatile struct s3_state *)STATE_ADDR)
#define pattern         ((u64 *)PATTERN_ADDR)
static u32 slp_typ;

static void check(int ok, const char *what, u64 got, u64 want)
{
    u32 no = ++st->check_no;
    if (ok) {
        puts("ok "); put_dec(no); putc(' '); puts(what); putc('\n');
        return;
    }
    puts("FAIL "); put_dec(no); putc(' '); puts(what);
    puts(": got "); put_hex(got); puts(" want "); put_hex(want); putc('\n');
    if (!st->first_failure)
        st->first_failure = no;
}

/* boot.S wants this: no interrupts are used here. */
struct irq_frame;
void isr_dispatch(struct irq_frame *f) { (void)f; outl(0xf4, 0x7f); for (;;) __asm__ volatile("cli; hlt"); }

static void put_kv(const char *key, u64 v)
{
    puts("s3: "); puts(key); putc('='); put_hex(v); putc('\n');
}

static u8 rtc_in(u8 reg) { outb(RTC_INDEX, reg); return inb(RTC_DATA); }
static void rtc_out(u8 reg, u8 v) { outb(RTC_INDEX, reg); outb(RTC_DATA, v); }
static u32 bcd(u8 v) { return (v >> 4) * 10u + (v & 15u); }
static u64 rtc_seconds_of_day(void)
{
    return bcd(rtc_in(4)) * 3600u + bcd(rtc_in(2)) * 60u + bcd(rtc_in(0));
}

/* ---- ACPI ------------------------------------------------------------------------------------- */
/* The first element of Name(_S3_, Package {...}) in the DSDT: the PM1a SLP_TYP; ~0 if absent. */
static u32 s3_slp_typ(u64 dsdt)
{
    const u8 *p = (const u8 *)dsdt + 36, *end = (const u8 *)dsdt + acpi_u32(dsdt + 4);
    for (; p + 8 < end; p++) {
        if (!acpi_sig_is(p, "_S3_", 4) || p[4] != 0x12)  /* NameString, then PackageOp */
            continue;
        const u8 *e = p + 5 + 1 + (p[5] >> 6) + 1;  /* PkgLength (1 + its follow bytes), NumElements */
        if (e >= end) return ~0u;
        if (*e == 0x00 || *e == 0x01) return *e;    /* ZeroOp, OneOp */
        if (*e == 0x0a) return e[1];                 /* BytePrefix */
        return ~0u;
    }
    return ~0u;
}

static u64 find_acpi(void)                /* returns the FACS; sets pm1a_evt, pm1a_cnt, slp_typ */
{
    u64 rsdp = acpi_find_rsdp();
    check(rsdp != 0, "RSDP in 0xE0000-0xFFFFF", 0, 1);
    if (!rsdp) return 0;
    u64 fadt = acpi_find_table(acpi_u32(rsdp + 16), "FACP");
    int fadt_ok = acpi_table_ok(fadt, "FACP");
    check(fadt_ok, "RSDT lists a FADT with a valid checksum", 0, 1);
    if (!fadt_ok) return 0;
    u64 facs = acpi_u32(fadt + 36), dsdt = acpi_u32(fadt + 40);
    st->pm1a_evt = acpi_u32(fadt + 56);
    st->pm1a_cnt = acpi_u32(fadt + 64);
    check(facs && acpi_sig_is((void *)facs, "FACS", 4) && acpi_u32(facs + 4) >= 64, "FACS signature and length",
          facs, 0);
    check(acpi_table_ok(dsdt, "DSDT"), "DSDT signature and checksum", dsdt, 0);
    check(st->pm1a_evt && st->pm1a_cnt, "FADT PM1a event and control blocks", st->pm1a_evt, st->pm1a_cnt);
    slp_typ = dsdt ? s3_slp_typ(dsdt) : ~0u;
    put_kv("slp_typ", slp_typ);
    check(slp_typ < 8, "the DSDT has \\_S3 with a SLP_TYP", slp_typ, 1);
    return facs && st->pm1a_cnt && slp_typ < 8 ? facs : 0;
}

/* ---- the sleep -------------------------------------------------------------------------------- */
static u64 sum_pattern(void)
{
    u64 s = 0;
    for (u32 i = 0; i < PATTERN_WORDS; i++)
        s = s * 31 + pattern[i];
    return s;
}

/* Until register A shows an update begin and end (at most ~3 s of tries: the clock may be stopped). */
static int wait_rtc_update(void)
{
    u64 tries = 0;
    while (!(rtc_in(RTC_REG_A) & REG_A_UIP))
        if (++tries > 3000000) return 0;
    while (rtc_in(RTC_REG_A) & REG_A_UIP)
        if (++tries > 3000000) return 0;
    return 1;
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    for (u32 i = 0; i < sizeof(struct s3_state); i++)
        ((volatile u8 *)STATE_ADDR)[i] = 0;
    puts("mbs3: start\n");
    check(magic == MB_BOOT_MAGIC, "EAX magic", magic, MB_BOOT_MAGIC);
    mb_args(mbi);
    st->no_alarm = mb_arg("noalarm") != 0;
    st->kut = mb_arg("kut") != 0;
    u64 facs = find_acpi();
    if (!facs)
        return (u32)st->first_failure;
    for (char *s = ap_tramp, *d = (char *)WAKE_PAGE; s < ap_tramp_end; )
        *d++ = *s++;
    *(volatile u32 *)(facs + 12) = WAKE_PAGE;          /* Firmware_Waking_Vector: real mode 0800:0000 */
    *(volatile u64 *)(facs + 24) = 0;                  /* no X_Firmware_Waking_Vector */
    u64 x = 0x9e3779b97f4a7c15ull;
    for (u32 i = 0; i < PATTERN_WORDS; i++)
        pattern[i] = x = x * 6364136223846793005ull + 1442695040888963407ull;
    st->pattern_sum = sum_pattern();
    check(wait_rtc_update(), "RTC register A shows an update (UIP set, then clear)", 0, 1);
    st->slept_at = rtc_seconds_of_day();
    if (!st->no_alarm) {
        u8 alarm = (u8)((st->slept_at + 2) % 60);
        rtc_out(1, st->kut ? ALARM_DONT_CARE : (u8)((alarm / 10) << 4 | alarm % 10)); /* seconds, BCD */
        rtc_out(3, ALARM_DONT_CARE);                      /* minutes */
        rtc_out(5, ALARM_DONT_CARE);                      /* hours */
        (void)rtc_in(RTC_REG_C);                          /* acknowledge stale flags */
        rtc_out(RTC_REG_B, rtc_in(RTC_REG_B) | REG_B_AIE);
        if (!st->kut)
            outw((u16)(st->pm1a_evt + 2), RTC_EN);       /* the alarm may wake us (QEMU insists; ACPI 4.8.3.1.1) */
    }
    put_kv("slept_at", st->slept_at);
    if (st->first_failure)
        return (u32)st->first_failure;
    *HPET_CONFIG |= 1;                                 /* running at the sleep: a wake's reset halts it */
    *IOAPIC_SEL = IOAPIC_PIN9_LO;
    *IOAPIC_WIN = 0x41;                                /* unmasked, vector 0x41: a wake's reset masks it */
    puts("mbs3: entering S3\n");
    st->phase = PHASE_ASLEEP;
    __asm__ volatile("outw %1, %2; movl %3, %0"
                     : "=m"(*(u32 *)&st->phase)
                     : "a"((u16)(slp_typ << 10 | SLP_EN)), "Nd"((u16)st->pm1a_cnt), "i"(PHASE_RAN_ON) : "memory");
    for (;;)
        __asm__ volatile("pause");
}

/* The resumed BSP arrives here through the trampoline (index 0: no AP was ever started). */
void ap_main(u32 index)
{
    if (st->phase == 0)
        return;                                        /* an AP started by someone else: nothing to do */
    puts("mbs3: resumed\n");
    put_kv("index", index);
    check(st->phase == PHASE_ASLEEP, "no instruction ran after the write to PM1a_CNT", st->phase, PHASE_ASLEEP);
    check(sum_pattern() == st->pattern_sum, "RAM kept across S3", sum_pattern(), st->pattern_sum);
    u16 sts = inw((u16)st->pm1a_evt);
    put_kv("pm1_sts", sts);
    put_kv("pm1_cnt", inw((u16)st->pm1a_cnt));
    put_kv("rtc_reg_b", rtc_in(RTC_REG_B));
    put_kv("rtc_reg_c", rtc_in(RTC_REG_C));
    u32 want = st->no_alarm ? WAK_STS : WAK_STS | RTC_EN;
    check(sts != 0xffff && (sts & (WAK_STS | RTC_EN)) == want, "WAK_STS (and RTC_STS for the alarm) in PM1a_STS",
          sts, want);
    u64 hpet = *HPET_CONFIG;
    put_kv("hpet_config", hpet);
    check(!(hpet & 1), "the HPET was reset by the wake (counter halted)", hpet, 0);
    *IOAPIC_SEL = IOAPIC_PIN9_LO;
    u32 pin9 = *IOAPIC_WIN;
    check(pin9 == 0x10000, "the IOAPIC was reset by the wake (entry 9 masked, vector 0)", pin9, 0x10000);
    u64 slept = (rtc_seconds_of_day() + 86400 - st->slept_at) % 86400;
    put_kv("slept_seconds", slept);
    if (!st->no_alarm)
        check(slept >= 1, "woke at or after the RTC alarm", slept, st->kut ? 1 : 2);
    puts(st->first_failure ? "mbs3: FAILED\n" : "mbs3: PASSED\n");
    exit((u32)st->first_failure);
}
