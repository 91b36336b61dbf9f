/* Self-timed IO-path bench (issue 15 item 4): one Multiboot kernel that runs unchanged under broiler (-k, with
 * --testdev) and under QEMU (-kernel, -device pci-testdev), so `broiler bench` can put a QEMU column beside its
 * host-timed ones. QEMU has no host side for the bench's control port, so this guest times itself.
 *
 * Paths (the same keys as broiler/bench/guest.py; the host-side mirror is broiler/bench/qemu_io.py):
 *   loop            dec; jnz                              the loop alone
 *   pio_out/pio_in  outl/inl on port UNHANDLED_PORT       no device in either VMM: a sync exit to the VMM
 *   mmio_write/read movl to/from UNHANDLED_MMIO            no device, no RAM in either VMM: a sync MMIO exit
 *   ioeventfd_pio   outb to pci-testdev BAR1 + 132         its portio-wildcard-eventfd test (KVM ioeventfd)
 *   ioeventfd_mmio  movb to pci-testdev BAR0 + 2049        its mmio-wildcard-eventfd test (KVM ioeventfd)
 * Each path runs a warm-up of 50, then per repetition N1 and N2 iterations; each batch is timed with rdtsc
 * around the inline-asm loop, so (t(N2) - t(N1)) / (N2 - N1) is one operation in TSC ticks, whatever the
 * loop's entry costs. The ticks are printed raw; the host converts them with its own TSC rate
 * (KVM_GET_TSC_KHZ). tsc_hz, measured against PIT channel 2, is printed as a cross-check.
 *
 * Output (serial COM1; "iobench:" lines, key=value separated by single spaces):
 *   iobench: start tsc_hz=<hz> port=<port> mmio=<addr> bar0=<addr> bar1=<port> bars=firmware|guest|none
 *       (bars=guest: the firmware left pci-testdev's BARs at 0, as qboot does, and this kernel placed them)
 *   iobench: <path> rep=<r> n=<n> ticks=<t>                                        one line per timed batch
 *   iobench: <path> skipped <why>                                                  a path that cannot run here
 *   iobench: <path> device_count=<c>      writes that reached pci-testdev instead of its eventfd (0 expected)
 *   iobench: done
 * Command-line words: n1=N (default 2000), n2=N (12000), reps=N (1), paths=key,key,... (default every path).
 * Exit (isa-debug-exit, port 0xf4): 0 (status 1) when done; 1 when n2 <= n1 or an ioeventfd write reached the
 * device; 3 on a bad Multiboot magic.
 *
 * build-with: lib/lib.c lib/pci.c multiboot/lib/mb.c
 */
#include "mb.h"
#include "io_loops.h"

#define UNHANDLED_PORT 0x5000       /* free in broiler's PC map and in QEMU's pc (its IO BARs start at 0xc000) */
#define UNHANDLED_MMIO 0xe0000000UL /* PCI hole; broiler's BAR window ends at 0xd0000000 and SeaBIOS puts
                                     * QEMU pc's 32-bit BARs just below 0xfec00000 */
#define PCI_TESTDEV_VENDOR 0x1b36
#define PCI_TESTDEV_DEVICE 0x0005
#define TESTDEV_WILDCARD 1          /* test kind k = 1: wildcard-eventfd (selected by writing k to +0) */
#define TESTDEV_COUNT 12            /* u32 count of writes that reached the device */
#define TESTDEV_OFFSET 4            /* u32 offset of the test's doorbell */
#define WARMUP 50
/* Where the kernel puts pci-testdev's BARs when no firmware did (QEMU with qboot leaves them at 0; SeaBIOS and
 * broiler assign them): below the IOAPIC, and at the start of the range SeaBIOS gives IO BARs. */
#define TESTDEV_BAR0_FALLBACK 0xfeb00000UL
#define TESTDEV_BAR1_FALLBACK 0xc000

/* The loops are lib/io_loops.h's, shared with bench_io.c (the host-timed bench guest). */
enum {
    OP_NOP = IO_LOOP_NOP,
    OP_PIO_OUT = IO_LOOP_OUTL,
    OP_PIO_IN = IO_LOOP_INL,
    OP_MMIO_WRITE = IO_LOOP_MOVL_TO,
    OP_MMIO_READ = IO_LOOP_MOVL_FROM,
    OP_PIO_OUTB = IO_LOOP_OUTB,
    OP_MMIO_WRITEB = IO_LOOP_MOVB_TO,
};

struct path {
    const char *key;
    int op;
    int testdev_bar;                /* -1: no pci-testdev; 0 or 1: the BAR whose wildcard test it selects */
};

static const struct path paths[] = {
    {"loop", OP_NOP, -1},
    {"pio_out", OP_PIO_OUT, -1},
    {"pio_in", OP_PIO_IN, -1},
    {"mmio_write", OP_MMIO_WRITE, -1},
    {"mmio_read", OP_MMIO_READ, -1},
    {"ioeventfd_pio", OP_PIO_OUTB, 1},
    {"ioeventfd_mmio", OP_MMIO_WRITEB, 0},
};
#define NPATHS (sizeof(paths) / sizeof(paths[0]))

static u64 bar[2];                  /* pci-testdev: BAR0 memory address, BAR1 port; 0 when absent */
static const char *bars_by = "none"; /* who assigned them: "firmware" or this kernel ("guest") */

static u64 timed(int op, u64 n, u64 addr)
{
    u64 start = rdtsc();
    io_loop((enum io_loop)op, n, addr);
    return rdtsc() - start;
}

static u8 td_read8(int io, u32 off) { return io ? inb((u16)(bar[1] + off)) : mmio_read8(bar[0] + off); }
static void td_write8(int io, u32 off, u8 v)
{
    if (io)
        outb((u16)(bar[1] + off), v);
    else
        mmio_write8(bar[0] + off, v);
}
static u32 td_read32(int io, u32 off) /* pci-testdev's header reads back byte by byte */
{
    return td_read8(io, off) | td_read8(io, off + 1) << 8 | td_read8(io, off + 2) << 16 |
           (u32)td_read8(io, off + 3) << 24;
}

static void find_testdev(void)
{
    for (u16 slot = 0; slot < 32; slot++) {
        u16 bdf = (u16)(slot << 3);
        if (pci_read16(bdf, PCI_VENDOR_ID) != PCI_TESTDEV_VENDOR || pci_read16(bdf, PCI_DEVICE_ID) != PCI_TESTDEV_DEVICE)
            continue;
        bars_by = "firmware";
        if (!pci_bar_addr(bdf, 0) || !pci_bar_addr(bdf, 1)) {
            pci_bar_set(bdf, 0, TESTDEV_BAR0_FALLBACK); /* decode is still off: nothing moves under a driver */
            pci_bar_set(bdf, 1, TESTDEV_BAR1_FALLBACK);
            bars_by = "guest";
        }
        pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | PCI_CMD_IO | PCI_CMD_MEM);
        bar[0] = pci_bar_addr(bdf, 0);
        bar[1] = pci_bar_addr(bdf, 1);
        return;
    }
}

/* Where a path's op goes: the unhandled port or page, or the selected wildcard test's doorbell. */
static u64 target(const struct path *p)
{
    if (p->testdev_bar < 0)
        return p->op == OP_PIO_OUT || p->op == OP_PIO_IN ? UNHANDLED_PORT : UNHANDLED_MMIO;
    int io = p->testdev_bar;
    td_write8(io, 0, TESTDEV_WILDCARD); /* select (and restart) this BAR's wildcard-eventfd test */
    return bar[io] + td_read32(io, TESTDEV_OFFSET);
}

static int run_path(const struct path *p, u64 n1, u64 n2, u64 reps)
{
    if (p->testdev_bar >= 0 && !bar[p->testdev_bar]) {
        printf("iobench: %s skipped no pci-testdev\n", p->key);
        return 0;
    }
    u64 addr = target(p);
    timed(p->op, WARMUP, addr);
    for (u64 r = 0; r < reps; r++) {
        u64 t1 = timed(p->op, n1, addr), t2 = timed(p->op, n2, addr);
        printf("iobench: %s rep=%lu n=%lu ticks=%lu\n", p->key, r, n1, t1);
        printf("iobench: %s rep=%lu n=%lu ticks=%lu\n", p->key, r, n2, t2);
    }
    if (p->testdev_bar < 0)
        return 0;
    u32 count = td_read32(p->testdev_bar, TESTDEV_COUNT);
    td_write8(p->testdev_bar, 0, 3); /* no test selected: its doorbell goes away */
    printf("iobench: %s device_count=%u\n", p->key, count);
    return count != 0;
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC)
        return 3;
    mb_args(mbi);
    u64 n1 = mb_arg_num("n1", 2000), n2 = mb_arg_num("n2", 12000), reps = mb_arg_num("reps", 1);
    const char *list = mb_arg("paths");
    if (n1 < 1 || n2 <= n1) {
        printf("iobench: FAILED n2 (%lu) must be larger than n1 (%lu)\n", n2, n1);
        return 1;
    }
    tsc_calibrate();
    find_testdev();
    printf("iobench: start tsc_hz=%lu port=%x mmio=%lx bar0=%lx bar1=%lx bars=%s\n", tsc_hz, UNHANDLED_PORT,
           UNHANDLED_MMIO, bar[0], bar[1], bars_by);
    int failed = 0;
    for (u32 i = 0; i < NPATHS; i++)
        if (mb_list_has(list, paths[i].key))
            failed |= run_path(&paths[i], n1, n2, reps);
    puts("iobench: done\n");
    return (u32)failed;
}
