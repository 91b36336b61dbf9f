/* Acceptance guest for PCI (issue 4), written against the guest toolkit's lib/pci.c.
 *
 *  1. enumeration of bus 0 through CF8/CFC and through ECAM: IDs, class, header, interrupt pin,
 *     capabilities and BAR sizes of the host bridge and the twelve demo functions (the fixed list of
 *     platform.add_pci_demo_devices); both mechanisms must agree byte for byte;
 *  2. hostile configuration accesses: absent functions, the CF8 enable bit, odd widths on the latch
 *     and on ECAM, the extended space, read-only and write-1-to-clear registers;
 *  3. BAR moves (IO and MEM, with decode on and off, by a single byte): the device answers at the new
 *     address only, the old one reads all ones, doorbells ring at the new address;
 *  4. BARs moved onto RAM, ECAM, the LAPIC/IOAPIC, legacy ports, other BARs and platform devices:
 *     not decoded, nothing shadowed, and a blocked BAR comes alive once the conflict goes away;
 *  5. INTx (IOAPIC line from config 0x3C, level-triggered, acknowledged by STATUS then EOI), with
 *     Interrupt Disable; MSI, also disabled; MSI-X with vector mask, function mask (PBA pending,
 *     delivery on unmask), disabled, a moved table, and hostile table/PBA accesses;
 *  6. DMA both ways on each DMA device, and bad DMA (bad DIR, outside the device buffer, outside
 *     guest RAM, across its end, huge lengths): error status, interrupt, nothing copied;
 *  7. odd sizes, offsets and read-only registers in the devices' register blocks.
 *
 * Every interrupt is counted per device and must arrive exactly once per completion (an INTx
 * interrupt that finds nothing pending counts as spurious, as on a shared line: see demo_irq). The guest
 * prints what the host should see ("irqs <name> <n>", "errors <name> <n>", ...) for the host test to
 * compare with broiler's counters. Any RAM size of 4 MiB or more works (the guest finds where RAM ends);
 * run it with a short async delay (broiler run --async-delay 0).
 * Exit value: the number of failed checks. */
#include "broiler.h"

#define TICK_VECTOR 0xef
#define TICK_COUNT 10000000u /* LAPIC timer at 1 GHz, divide by 1: 10 ms */
#define MAX_TICKS 300u       /* longest wait: 3 s */
#define K 3                  /* jobs per interrupt test */

/* The demo register block (BAR0) */
#define SYNC_SLOT_NUM 0x0
#define SYNC_MIN_FREQ 0x8
#define DMA_SRC 0x0
#define DMA_DST 0x4
#define DMA_DIR 0x8
#define DMA_LEN 0xc
#define DOORBELL 0x10
#define STATUS 0x14
#define COMPLETIONS 0x18
#define ERROR_CODE 0x1c
#define ST_DONE 1u
#define ST_ERROR 2u
#define ST_BUSY 4u

enum { IRQ_NONE, IRQ_INTX, IRQ_MSI, IRQ_MSIX };
enum { SLOT_BRIDGE, SLOT_SYNC_PIO, SLOT_SYNC_MMIO, SLOT_BASE, SLOT_ASYNC_PIO, SLOT_ASYNC_MMIO, SLOT_INTX,
       SLOT_MSI, SLOT_MSIX, SLOT_DMA_INTX, SLOT_DMA_MSI, SLOT_DMA_MSIX, SLOT_DMA_BUF, NSLOTS };

struct demo {
    const char *name;
    u16 vendor, device;
    u8 bar0, bar1;      /* PCI_BAR_* of BAR0/BAR1, 0x100 bytes each */
    u8 irq;             /* IRQ_* */
    u8 db_width;        /* doorbell width at BAR0+0x10; 0: no doorbell */
    u32 dma_size;       /* DMA buffer size; 0: not a DMA device */
    /* run time */
    u16 bdf;
    u64 base;           /* BAR0 now */
    u8 vector;
    u32 jobs;           /* doorbells that completed */
    u32 expect;         /* interrupts we expect so far */
    u32 fn_errors;      /* guest errors we made the function count (config space, BARs) */
    u32 reg_errors;     /* ... and its register block (BAR0) */
    u32 copied;         /* bytes the device should have copied */
    volatile u32 irqs, bad_status, last_status;
    volatile u32 spurious, while_held, held; /* INTx: nothing pending / while Interrupt Disable */
    struct pci_msix msix;
};

static struct demo demos[NSLOTS] = {
    {"host-bridge", 0x1b36, 0x0008, 0, 0, IRQ_NONE, 0, 0},
    {"sync-pio-pci", 0x1003, 0x1991, PCI_BAR_IO, 0, IRQ_NONE, 0, 0},
    {"sync-mmio-pci", 0x1006, 0x1991, PCI_BAR_MEM32, 0, IRQ_NONE, 0, 0},
    {"pci-base", 0x1016, 0x1413, PCI_BAR_IO, PCI_BAR_MEM32, IRQ_NONE, 0, 0},
    {"async-pio-pci", 0x1009, 0x1991, PCI_BAR_IO, 0, IRQ_INTX, 4, 0},
    {"async-mmio-pci", 0x1008, 0x1991, PCI_BAR_MEM32, 0, IRQ_INTX, 4, 0},
    {"pci-intx", 0x1016, 0x1991, PCI_BAR_IO, 0, IRQ_INTX, 2, 0},
    {"pci-msi", 0x1001, 0x1991, PCI_BAR_IO, 0, IRQ_MSI, 2, 0},
    {"pci-msix", 0x1002, 0x1991, PCI_BAR_IO, PCI_BAR_MEM32, IRQ_MSIX, 2, 0},
    {"dma-intx", 0x0309, 0x1989, PCI_BAR_IO, 0, IRQ_INTX, 2, 4096},
    {"dma-msi", 0x1024, 0x1991, PCI_BAR_IO, 0, IRQ_MSI, 2, 4096},
    {"dma-msix", 0x1026, 0x1991, PCI_BAR_IO, PCI_BAR_MEM32, IRQ_MSIX, 2, 4096},
    {"dma-buf", 0x1004, 0x1991, PCI_BAR_IO, PCI_BAR_MEM32, IRQ_MSIX, 2, 1u << 20},
};

static struct demo *by_vector[256];
static u8 apic;
static u32 conf1_errors, ecam_errors, straddles; /* hostile accesses we made */

/* -- where RAM ends ---------------------------------------------------------------------------- */
/* broiler's RAM runs from 0 to min(RAM size, 3 GiB) below the PCI hole (the DMA devices take 32-bit
 * addresses, so that is the RAM they can reach). Above it a write is dropped and a read gives all
 * ones, so a dword that keeps what we wrote is RAM. Binary search over 4 KiB pages. */
static u64 ram_end;

static int is_ram_below(u64 a)
{
    volatile u32 *p = (volatile u32 *)(a - 4);
    u32 old = *p;
    *p = 0x5eed0f0d;
    int ram = *p == 0x5eed0f0d;
    *p = old;
    return ram;
}

static void find_ram_end(void)
{
    u64 lo = 4ul << 20, hi = 3ul << 30; /* RAM below lo for sure; none above hi */
    if (is_ram_below(hi)) {
        ram_end = hi;
    } else {
        while (hi - lo > 4096) {
            u64 mid = (lo + hi) / 2 & ~4095ul;
            if (is_ram_below(mid))
                lo = mid;
            else
                hi = mid;
        }
        ram_end = lo;
    }
    CHECK_EQ(is_ram_below(4ul << 20), 1);
    printf("ram end %lx\n", ram_end);
}

/* -- the demo register block ---------------------------------------------------------------- */
static int bar0_is_io(struct demo *d)
{
    return d->bar0 == PCI_BAR_IO;
}

static u32 rd(struct demo *d, u32 off)
{
    return bar0_is_io(d) ? inl((u16)(d->base + off)) : mmio_read32(d->base + off);
}

static void wr(struct demo *d, u32 off, u32 v)
{
    if (bar0_is_io(d))
        outl((u16)(d->base + off), v);
    else
        mmio_write32(d->base + off, v);
}

/* The doorbell, with the width its ioeventfd was registered with (so KVM catches it). */
static void ring(struct demo *d)
{
    if (!bar0_is_io(d))
        mmio_write32(d->base + DOORBELL, 1);
    else if (d->db_width == 4)
        outl((u16)(d->base + DOORBELL), 1);
    else
        outw((u16)(d->base + DOORBELL), 1);
}

/* -- interrupts ---------------------------------------------------------------------------- */
static volatile u32 ticks;

static void tick(struct irq_frame *f)
{
    (void)f;
    ticks++;
    lapic_eoi();
}

/* Every demo interrupt: STATUS shows DONE; acknowledge DONE/ERROR (lowers INTx), then EOI.
 *
 * An INTx line may be shared, so an INTx handler that finds nothing pending just sends EOI, as any
 * PCI driver would ("spurious"). Hosts running KVM-PVM need that: they deliver each level-triggered
 * IOAPIC interrupt twice (the LAPIC's IRR bit stays set while the first is in service), see
 * docs/pci.md. broiler's side -- one line raise per completion -- is checked by the host test.
 * While a test holds a line with Interrupt Disable the handler touches nothing ("held"). */
static void demo_irq(struct irq_frame *f)
{
    struct demo *d = by_vector[f->vector];
    u32 st = rd(d, STATUS);
    if (d->irq == IRQ_INTX && (d->held || !(st & ST_DONE))) {
        if (d->held)
            d->while_held++;
        else
            d->spurious++;
        lapic_eoi();
        return;
    }
    d->last_status = st;
    if (!(st & ST_DONE))
        d->bad_status++;
    wr(d, STATUS, st & (ST_DONE | ST_ERROR));
    d->irqs++;
    lapic_eoi();
}

static void lapic_timer_start(void)
{
    set_handler(TICK_VECTOR, tick);
    mmio_write32(0xfee003e0UL, 0xb);                    /* divide by 1 */
    mmio_write32(0xfee00320UL, TICK_VECTOR | 1u << 17); /* periodic */
    mmio_write32(0xfee00380UL, TICK_COUNT);
}

static void lapic_timer_stop(void)
{
    mmio_write32(0xfee00320UL, 1u << 16);
    mmio_write32(0xfee00380UL, 0);
}

/* Sleep with interrupts on for n timer ticks. */
static void settle(u32 n)
{
    u32 until = ticks + n;
    for (u32 i = 0; i < 4 * n + 4 && ticks < until; i++)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* Ring and wait for the completion interrupt; 1 if it came. */
static int job(struct demo *d)
{
    u32 want = d->irqs + 1;
    ring(d);
    int ok = wait_for(&d->irqs, want, MAX_TICKS);
    d->jobs++;
    d->expect++;
    if (!ok) {
        printf("FAIL: %s: no interrupt after its doorbell\n", d->name);
        check_failures++;
    }
    return ok;
}

/* Poll (one timer tick apart) until STATUS has all of bits; 1 if it did. */
static int wait_status(struct demo *d, u32 bits)
{
    for (u32 i = 0; i < MAX_TICKS; i++) {
        if ((rd(d, STATUS) & bits) == bits)
            return 1;
        settle(1);
    }
    printf("FAIL: %s: STATUS never showed %x\n", d->name, bits);
    check_failures++;
    return 0;
}

static void setup_interrupts(void)
{
    idt_init();
    pic_init(0x20, 0x28); /* all masked: the legacy PIC stays out of the way */
    lapic_init();
    apic = (u8)lapic_id();
    lapic_timer_start();
    for (int s = 0; s < NSLOTS; s++) {
        struct demo *d = &demos[s];
        if (d->irq == IRQ_NONE)
            continue;
        if (d->irq == IRQ_INTX) {
            u8 line = pci_read8(d->bdf, PCI_INTERRUPT_LINE);
            CHECK_EQ(line >= 16 && line < 24, 1); /* an IOAPIC-only line */
            d->vector = (u8)(IOAPIC_VECTOR_BASE + line);
            ioapic_route(line, d->vector, 1, apic); /* PCI INTx: level-triggered, active high */
        } else if (d->irq == IRQ_MSI) {
            d->vector = (u8)(0xa0 + s);
            CHECK_EQ(pci_msi_enable(d->bdf, apic, d->vector), 0x40);
        } else {
            d->vector = (u8)(0xc0 + s);
            CHECK_EQ(pci_msix_setup(d->bdf, &d->msix, 1, apic, d->vector), 1);
        }
        by_vector[d->vector] = d;
        set_handler(d->vector, demo_irq);
    }
}

/* -- 1. enumeration --------------------------------------------------------------------------- */
#define MAX_FOUND 40
static struct pci_dev found[2][MAX_FOUND];
static int nfound[2];

static void check_function(const struct pci_dev *f, struct demo *d, int slot)
{
    CHECK_EQ(f->vendor, d->vendor);
    CHECK_EQ(f->device, d->device);
    CHECK_EQ(f->class_code, slot == SLOT_BRIDGE ? 0x060000 : 0);
    CHECK_EQ(f->revision, 0);
    CHECK_EQ(f->header_type, 0);
    CHECK_EQ(f->irq_pin, d->irq == IRQ_INTX ? 1 : 0);
    u8 kinds[6] = {d->bar0, d->bar1, 0, 0, 0, 0};
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(f->bar[i].kind, kinds[i]);
        CHECK_EQ(f->bar[i].size, kinds[i] ? 0x100 : 0);
        CHECK_EQ(f->bar[i].prefetch, 0);
    }
    /* BAR0 still decodes where it was after the sizing */
    if (d->bar0)
        CHECK_EQ(f->bar[0].addr, pci_bar_addr(f->bdf, 0));
    /* capabilities: MSI or MSI-X at 0x40, nothing else */
    u16 status = pci_read16(f->bdf, PCI_STATUS);
    CHECK_EQ(!!(status & PCI_STATUS_CAP_LIST), d->irq == IRQ_MSI || d->irq == IRQ_MSIX);
    CHECK_EQ(pci_find_cap(f->bdf, PCI_CAP_ID_MSI), d->irq == IRQ_MSI ? 0x40 : 0);
    CHECK_EQ(pci_find_cap(f->bdf, PCI_CAP_ID_MSIX), d->irq == IRQ_MSIX ? 0x40 : 0);
    if (d->irq == IRQ_MSI) {
        CHECK_EQ(pci_read8(f->bdf, 0x41), 0);           /* end of the list */
        CHECK_EQ(pci_read16(f->bdf, 0x42), 0);          /* 1 vector, 32-bit, no masking, off */
    }
    if (d->irq == IRQ_MSIX) {
        CHECK_EQ(pci_read16(f->bdf, 0x42), 0);          /* 1 entry, off */
        CHECK_EQ(pci_read32(f->bdf, 0x44), 0x00 | 1);   /* table at BAR1 + 0 */
        CHECK_EQ(pci_read32(f->bdf, 0x48), 0x80 | 1);   /* PBA at BAR1 + 0x80 */
    }
}

static void put_hexn(u32 v, int digits)
{
    while (digits--)
        putc("0123456789abcdef"[(v >> (4 * digits)) & 15]);
}

static void enumerate(int mech)
{
    pci_mechanism = mech;
    int n = pci_scan_bus(0, found[mech], MAX_FOUND);
    nfound[mech] = n;
    printf("enumerate %s: %d functions\n", mech == PCI_ECAM ? "ecam" : "conf1", n);
    for (int s = 0; s < NSLOTS; s++) {
        const struct pci_dev *f = pci_find(found[mech], n, demos[s].vendor, demos[s].device);
        CHECK_EQ(f != 0, 1);
        if (!f)
            continue;
        CHECK_EQ(f->bdf, PCI_BDF(0, s, 0));
        check_function(f, &demos[s], s);
    }
    /* Anything else on the bus (a host test may add functions): print it, move its memory BARs
     * up by 1 MiB (decode off meanwhile) -- the toolkit's sizing and assignment on any BAR kind. */
    for (int i = 0; i < n && i < MAX_FOUND; i++) {
        struct pci_dev *f = &found[mech][i];
        if (PCI_BDF_DEV(f->bdf) < NSLOTS && PCI_BDF_FN(f->bdf) == 0)
            continue;
        printf("extra %s 00:", mech == PCI_ECAM ? "ecam" : "conf1");
        put_hexn(PCI_BDF_DEV(f->bdf), 2);
        printf(".%u ", PCI_BDF_FN(f->bdf));
        put_hexn(f->vendor, 4);
        putc(':');
        put_hexn(f->device, 4);
        printf(" class %x pin %u", f->class_code, f->irq_pin);
        static const char *kind[] = {"", "io", "mem32", "mem64"};
        for (int b = 0; b < 6; b++)
            if (f->bar[b].kind)
                printf(" bar%d %s%s %lx+%lx", b, kind[f->bar[b].kind], f->bar[b].prefetch ? "-pf" : "",
                       f->bar[b].addr, f->bar[b].size);
        printf("\n");
        if (mech == PCI_ECAM)
            for (int b = 0; b < 6; b++)
                if (f->bar[b].kind == PCI_BAR_MEM32 || f->bar[b].kind == PCI_BAR_MEM64) {
                    pci_bar_move(f->bdf, b, f->bar[b].addr + 0x100000);
                    CHECK_EQ(pci_bar_addr(f->bdf, b), f->bar[b].addr + 0x100000);
                }
    }
    pci_mechanism = PCI_CONF1;
}

static void enumeration(void)
{
    enumerate(PCI_CONF1);
    enumerate(PCI_ECAM);
    CHECK_EQ(nfound[PCI_CONF1], nfound[PCI_ECAM]);
    CHECK_EQ(memcmp(found[0], found[1], sizeof(found[0])), 0);
    /* Both mechanisms read the same 256 bytes of every function. */
    for (int s = 0; s < NSLOTS; s++) {
        u16 bdf = PCI_BDF(0, s, 0);
        u32 diff = 0;
        for (u16 r = 0; r < 0x100; r += 4)
            diff += pci_conf1_read(bdf, r, 4) != pci_ecam_read(bdf, r, 4);
        CHECK_EQ(diff, 0);
        demos[s].bdf = bdf;
        demos[s].base = demos[s].bar0 ? pci_bar_addr(bdf, 0) : 0;
    }
    /* After all that sizing every BAR decodes again where it was. */
    CHECK_EQ(rd(&demos[SLOT_SYNC_PIO], SYNC_MIN_FREQ), 0x10);
    CHECK_EQ(rd(&demos[SLOT_SYNC_MMIO], SYNC_MIN_FREQ), 0x10);
    CHECK_EQ(mmio_read32(pci_bar_addr(demos[SLOT_BASE].bdf, 1) + SYNC_MIN_FREQ), 0x10);
}

/* -- 2. hostile configuration accesses ------------------------------------------------------------ */
static void config_hostile(void)
{
    u16 sp = demos[SLOT_SYNC_PIO].bdf, sm = demos[SLOT_SYNC_MMIO].bdf, msi = demos[SLOT_MSI].bdf;

    /* Absent functions: all ones at every width through both mechanisms; writes vanish. */
    static const u16 absent[] = {PCI_BDF(0, 13, 0), PCI_BDF(0, 31, 0), PCI_BDF(0, 1, 1), PCI_BDF(0, 0, 7),
                                 PCI_BDF(1, 0, 0), PCI_BDF(15, 31, 7)};
    for (u32 i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
        u16 a = absent[i];
        CHECK_EQ(pci_conf1_read(a, 0, 4), 0xffffffff);
        CHECK_EQ(pci_conf1_read(a, 2, 2), 0xffff);
        CHECK_EQ(pci_conf1_read(a, 0x3d, 1), 0xff);
        CHECK_EQ(pci_ecam_read(a, 0, 4), 0xffffffff);
        CHECK_EQ(pci_ecam_read(a, 0xe, 2), 0xffff);
        CHECK_EQ(pci_ecam_read(a, 0xfff, 1), 0xff);
        pci_conf1_write(a, PCI_COMMAND, 2, 0xffff);
        pci_ecam_write(a, PCI_BAR0, 4, 0xffffffff);
    }
    CHECK_EQ(pci_conf1_read(PCI_BDF(255, 31, 7), 0, 4), 0xffffffff);

    /* CF8 without the enable bit: the window reads all ones and drops writes; the latch reads back. */
    u32 latch = (u32)sp << 8 | PCI_INTERRUPT_LINE;
    outl(PCI_CONF1_ADDR, latch);
    CHECK_EQ(inl(PCI_CONF1_ADDR), latch);
    CHECK_EQ(inl(PCI_CONF1_DATA), 0xffffffff);
    outb(PCI_CONF1_DATA, 0x99);
    CHECK_EQ(pci_conf1_read(sp, PCI_INTERRUPT_LINE, 1), 0);
    /* Latch bits 30:24 are ignored; bits 1:0 pick the first byte, as under QEMU (docs/pci.md §2). */
    u32 dword0 = pci_conf1_read(sp, 0, 4), dword1 = pci_conf1_read(sp, 4, 4);
    outl(PCI_CONF1_ADDR, PCI_CONF1_ENABLE | 0x7f000000 | (u32)sp << 8 | 3);
    CHECK_EQ(inl(PCI_CONF1_DATA), dword0 >> 24 | dword1 << 8);
    CHECK_EQ(dword0, 0x19911003);

    /* Byte and word accesses to the latch, and a dword at 0xcf9: ignored, all ones, counted. */
    latch = PCI_CONF1_ENABLE | (u32)sp << 8;
    outl(PCI_CONF1_ADDR, latch);
    CHECK_EQ(inb(0xcf8), 0xff);
    CHECK_EQ(inw(0xcfa), 0xffff);
    CHECK_EQ(inb(0xcfb), 0xff);
    CHECK_EQ(inl(0xcf9), 0xffffffff);
    outb(0xcfb, 0x01); /* Linux's type-2 probe */
    outw(0xcf8, 0);
    conf1_errors += 6;
    CHECK_EQ(inl(PCI_CONF1_ADDR), latch);

    /* The data window: any access that fits in 0xcfc-0xcff works ... */
    CHECK_EQ(inw(0xcfe), 0x1991);
    CHECK_EQ(inb(0xcfd), 0x10);
    CHECK_EQ(inw(0xcfd), 0x9110);
    CHECK_EQ(inb(0xcff), 0x19);
    /* ... one that runs past 0xcff never reaches the host (the bus's straddle rule). */
    CHECK_EQ(inl(0xcfd), 0xffffffff);
    CHECK_EQ(inw(0xcff), 0xffff);
    outl(0xcfe, 0);
    straddles += 3;
    CHECK_EQ(pci_conf1_read(sp, 0, 4), 0x19911003);

    /* ECAM: 1, 2 or 4 bytes, naturally aligned; anything else reads all ones and is counted. */
    u64 e = PCI_ECAM_BASE + ((u64)sp << 12);
    CHECK_EQ(mmio_read16(e + 1), 0xffff);
    CHECK_EQ(mmio_read32(e + 2), 0xffffffff);
    CHECK_EQ(mmio_read64(e), 0xffffffffffffffffUL);
    mmio_write16(e + PCI_INTERRUPT_LINE + 1, 0x1234);
    mmio_write64(e + PCI_BAR0, 0xffffffffffffffffUL); /* would size BAR0 if it got through */
    ecam_errors += 5;
    CHECK_EQ(pci_ecam_read(sp, PCI_BAR0, 4), demos[SLOT_SYNC_PIO].base | 1);
    CHECK_EQ(pci_ecam_read(sp, PCI_INTERRUPT_LINE, 2), 0);
    /* ECAM at odd-but-aligned offsets is fine */
    CHECK_EQ(pci_ecam_read(sp, 3, 1), 0x19);
    CHECK_EQ(pci_ecam_read(sp, 2, 2), 0x1991);
    /* The extended space of a conventional function: absent (a write there is counted). */
    CHECK_EQ(pci_ecam_read(sp, 0x100, 4), 0xffffffff);
    CHECK_EQ(pci_ecam_read(sp, 0xffc, 4), 0xffffffff);
    CHECK_EQ(pci_ecam_read(sp, 0xfff, 1), 0xff);
    pci_ecam_write(sp, 0x100, 4, 0);
    demos[SLOT_SYNC_PIO].fn_errors++;

    /* Read-only registers keep their value, through both mechanisms. */
    for (int mech = 0; mech < 2; mech++) {
        pci_mechanism = mech;
        u16 f = mech ? sm : sp;
        u32 id = pci_read32(f, 0);
        pci_write32(f, PCI_VENDOR_ID, 0x12345678);
        CHECK_EQ(pci_read32(f, 0), id);
        pci_write32(f, PCI_REVISION, 0xffffffff);
        CHECK_EQ(pci_read32(f, PCI_REVISION), 0);
        pci_write8(f, PCI_HEADER_TYPE, 0xff);
        CHECK_EQ(pci_read8(f, PCI_HEADER_TYPE), 0);
        pci_write32(f, PCI_SUBSYSTEM_VENDOR, 0xffffffff);
        CHECK_EQ(pci_read32(f, PCI_SUBSYSTEM_VENDOR), 0);
        pci_write8(f, PCI_CAP_PTR, 0x80);
        CHECK_EQ(pci_read8(f, PCI_CAP_PTR), 0);
        pci_write8(f, PCI_INTERRUPT_PIN, 1);
        CHECK_EQ(pci_read8(f, PCI_INTERRUPT_PIN), 0);
        /* unimplemented BARs and the ROM BAR read 0 whatever is written */
        for (u16 r = PCI_BAR0 + 4; r < 0x28; r += 4) {
            pci_write32(f, r, 0xffffffff);
            CHECK_EQ(pci_read32(f, r), 0);
        }
        pci_write32(f, PCI_ROM_ADDRESS, 0xffffffff);
        CHECK_EQ(pci_read32(f, PCI_ROM_ADDRESS), 0);
        /* interrupt line: all bits writable */
        pci_write8(f, PCI_INTERRUPT_LINE, 0x5a);
        CHECK_EQ(pci_read8(f, PCI_INTERRUPT_LINE), 0x5a);
        pci_write8(f, PCI_INTERRUPT_LINE, 0);
        /* COMMAND: only IO, MEM, master, parity, SERR and INTx-disable are writable */
        u16 cmd = pci_read16(f, PCI_COMMAND);
        pci_write16(f, PCI_COMMAND, 0xffff);
        CHECK_EQ(pci_read16(f, PCI_COMMAND), 0x0547);
        pci_write16(f, PCI_COMMAND, cmd);
        CHECK_EQ(pci_read16(f, PCI_COMMAND), cmd);
        /* STATUS: write-1-to-clear bits read 0, the read-only ones stay */
        pci_write16(f, PCI_STATUS, 0xffff);
        CHECK_EQ(pci_read16(f, PCI_STATUS), 0);
    }
    pci_mechanism = PCI_CONF1;
    pci_write16(msi, PCI_STATUS, 0xffff);
    CHECK_EQ(pci_read16(msi, PCI_STATUS), PCI_STATUS_CAP_LIST);
    pci_write8(msi, PCI_CAP_PTR, 0);
    CHECK_EQ(pci_read8(msi, PCI_CAP_PTR), 0x40);
    /* The host bridge has no BARs and no interrupt; its IDs stay. */
    pci_write32(0, PCI_BAR0, 0xffffffff);
    CHECK_EQ(pci_read32(0, PCI_BAR0), 0);
    pci_write32(0, 0, 0);
    CHECK_EQ(pci_read32(0, 0), 0x00081b36);
    CHECK_EQ(pci_read8(0, PCI_INTERRUPT_PIN), 0);
    printf("config hostile: conf1 %u ecam %u straddles %u\n", conf1_errors, ecam_errors, straddles);
}

/* -- 3. BAR moves ------------------------------------------------------------------------------- */
#define NEW_SYNC_PIO 0x7000
#define NEW_SYNC_MMIO 0xc3000000UL
#define NEW_ASYNC_PIO 0x7100
#define NEW_ASYNC_MMIO 0xc3001000UL
#define NEW_BASE_MEM 0xc3002000UL
#define NEW_MSIX_TABLE 0xc3003000UL

static void bar_moves(void)
{
    struct demo *sp = &demos[SLOT_SYNC_PIO], *sm = &demos[SLOT_SYNC_MMIO];
    struct demo *ap = &demos[SLOT_ASYNC_PIO], *am = &demos[SLOT_ASYNC_MMIO];

    /* IO BAR, decode on: 0x6200 -> 0x7000 in one dword write. */
    u64 old = sp->base;
    wr(sp, SYNC_SLOT_NUM, 0x55);
    pci_bar_set(sp->bdf, 0, NEW_SYNC_PIO);
    sp->base = NEW_SYNC_PIO;
    CHECK_EQ(pci_bar_addr(sp->bdf, 0), NEW_SYNC_PIO);
    CHECK_EQ(rd(sp, SYNC_MIN_FREQ), 0x10);
    CHECK_EQ(rd(sp, SYNC_SLOT_NUM), 0x55);
    CHECK_EQ(inl((u16)(old + SYNC_MIN_FREQ)), 0xffffffff);
    CHECK_EQ(inl((u16)(old + SYNC_SLOT_NUM)), 0xffffffff);

    /* MEM BAR by a single byte: 0xc2000000 -> 0xc3000000 (a partial BAR write merges). */
    old = sm->base;
    wr(sm, SYNC_SLOT_NUM, 0x66);
    pci_write8(sm->bdf, PCI_BAR0 + 3, (u8)(NEW_SYNC_MMIO >> 24));
    sm->base = NEW_SYNC_MMIO;
    CHECK_EQ(pci_bar_addr(sm->bdf, 0), NEW_SYNC_MMIO);
    CHECK_EQ(rd(sm, SYNC_MIN_FREQ), 0x10);
    CHECK_EQ(rd(sm, SYNC_SLOT_NUM), 0x66);
    CHECK_EQ(mmio_read32(old + SYNC_MIN_FREQ), 0xffffffff);
    /* COMMAND.MEM off: the BAR decodes nowhere; on: back where it was. */
    u16 cmd = pci_read16(sm->bdf, PCI_COMMAND);
    pci_write16(sm->bdf, PCI_COMMAND, cmd & ~PCI_CMD_MEM);
    CHECK_EQ(rd(sm, SYNC_MIN_FREQ), 0xffffffff);
    pci_write16(sm->bdf, PCI_COMMAND, cmd);
    CHECK_EQ(rd(sm, SYNC_MIN_FREQ), 0x10);

    /* Doorbell devices: move (decode off, as Linux does), then ring at the new address. */
    old = ap->base;
    pci_bar_move(ap->bdf, 0, NEW_ASYNC_PIO);
    ap->base = NEW_ASYNC_PIO;
    CHECK_EQ(pci_bar_addr(ap->bdf, 0), NEW_ASYNC_PIO);
    CHECK_EQ(inl((u16)(old + COMPLETIONS)), 0xffffffff);
    CHECK_EQ(job(ap), 1);
    CHECK_EQ(rd(ap, COMPLETIONS), 1);
    outl((u16)(old + DOORBELL), 1); /* the old doorbell: nobody there any more */

    old = am->base; /* this one with decode on: region and doorbell move in one config write */
    pci_bar_set(am->bdf, 0, NEW_ASYNC_MMIO);
    am->base = NEW_ASYNC_MMIO;
    CHECK_EQ(mmio_read32(old + COMPLETIONS), 0xffffffff);
    CHECK_EQ(job(am), 1);
    CHECK_EQ(rd(am, COMPLETIONS), 1);
    mmio_write32(old + DOORBELL, 1);
    settle(2); /* a job started by an old doorbell would complete (and interrupt) by now */
    CHECK_EQ(rd(ap, COMPLETIONS), 1);
    CHECK_EQ(rd(am, COMPLETIONS), 1);
    printf("bar moves: sync-pio %lx sync-mmio %lx async-pio %lx async-mmio %lx\n", sp->base, sm->base,
           ap->base, am->base);
}

/* -- 4. BARs where they must not go --------------------------------------------------------------- */
static void refuse_mem(struct demo *d, u64 where)
{
    pci_bar_set(d->bdf, 0, where);
    CHECK_EQ(pci_bar_addr(d->bdf, 0), where); /* the value stays: it is just not decoded */
    d->fn_errors++;
}

static void bar_hostile(void)
{
    struct demo *sp = &demos[SLOT_SYNC_PIO], *sm = &demos[SLOT_SYNC_MMIO], *base = &demos[SLOT_BASE];
    volatile u32 *ram = (volatile u32 *)0x200000UL;

    /* MEM BAR onto guest RAM: not decoded, RAM not shadowed, the old address is empty. */
    *ram = 0x5a5a5a5a;
    refuse_mem(sm, 0x200000);
    CHECK_EQ(*ram, 0x5a5a5a5a);
    CHECK_EQ(mmio_read32(0x200000 + SYNC_MIN_FREQ), 0);
    CHECK_EQ(mmio_read32(NEW_SYNC_MMIO + SYNC_MIN_FREQ), 0xffffffff);
    /* onto ECAM, the IOAPIC, the LAPIC, the platform's MMIO demos, the top of the hole */
    refuse_mem(sm, PCI_ECAM_BASE);
    CHECK_EQ(mmio_read32(PCI_ECAM_BASE), 0x00081b36);
    CHECK_EQ(pci_ecam_read(sm->bdf, 0, 4), 0x19911006);
    refuse_mem(sm, 0xfec00000UL);
    refuse_mem(sm, 0xfee00000UL);
    CHECK_EQ(lapic_id(), apic);
    refuse_mem(sm, 0xd0000000UL);
    CHECK_EQ(mmio_read32(0xd0000000UL + SYNC_MIN_FREQ), 0x10);
    refuse_mem(sm, 0xfffff000UL);
    /* the sizing pattern means "not programmed": not decoded, not an error */
    pci_bar_set(sm->bdf, 0, 0xffffff00UL);
    CHECK_EQ(pci_bar_addr(sm->bdf, 0), 0xffffff00UL);

    /* MEM BAR onto another BAR: blocked while pci-base's BAR1 is there, alive once it leaves. */
    u64 base_mem = pci_bar_addr(base->bdf, 1);
    wr(base, SYNC_SLOT_NUM, 0x77); /* pci-base: one block behind both BARs */
    refuse_mem(sm, base_mem);
    CHECK_EQ(mmio_read32(base_mem + SYNC_SLOT_NUM), 0x77);
    pci_bar_move(base->bdf, 1, NEW_BASE_MEM);
    CHECK_EQ(mmio_read32(NEW_BASE_MEM + SYNC_SLOT_NUM), 0x77);
    CHECK_EQ(mmio_read32(base_mem + SYNC_SLOT_NUM), 0x66); /* sync-mmio came alive there */
    pci_bar_set(sm->bdf, 0, NEW_SYNC_MMIO);
    CHECK_EQ(rd(sm, SYNC_SLOT_NUM), 0x66);
    CHECK_EQ(mmio_read32(base_mem + SYNC_SLOT_NUM), 0xffffffff);

    /* IO BAR onto legacy ports (COM1, the CF8 pair), above 64 KiB, onto the platform's demo
     * ports and onto another IO BAR: refused or blocked, every one of those still works. */
    u64 io[] = {0x300, 0xc00, 0x10000, 0x6000, base->base};
    for (u32 i = 0; i < sizeof(io) / sizeof(io[0]); i++) {
        pci_bar_set(sp->bdf, 0, io[i]);
        CHECK_EQ(pci_bar_addr(sp->bdf, 0), io[i]);
        sp->fn_errors++;
    }
    CHECK_EQ(inb(COM1 + 5) & 0x20, 0x20);                  /* the UART still answers */
    CHECK_EQ(pci_conf1_read(sp->bdf, 0, 4), 0x19911003);   /* so does CF8/CFC */
    CHECK_EQ(inl(0x6060 + SYNC_MIN_FREQ), 0x10);          /* the platform's sync PIO demo */
    CHECK_EQ(inl((u16)(base->base + SYNC_SLOT_NUM)), 0x77); /* pci-base, not sync-pio */
    CHECK_EQ(inl(NEW_SYNC_PIO + SYNC_MIN_FREQ), 0xffffffff);
    pci_bar_set(sp->bdf, 0, 0); /* address 0: not programmed, not an error */
    pci_bar_set(sp->bdf, 0, NEW_SYNC_PIO);
    CHECK_EQ(rd(sp, SYNC_SLOT_NUM), 0x55);
    printf("bar hostile: sync-pio %u refusals, sync-mmio %u refusals\n", sp->fn_errors, sm->fn_errors);
}

/* -- 5. interrupts ---------------------------------------------------------------------------- */
static void intx_tests(void)
{
    static const int slots[] = {SLOT_ASYNC_PIO, SLOT_ASYNC_MMIO, SLOT_INTX};
    for (u32 i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        struct demo *d = &demos[slots[i]];
        for (int k = 0; k < K; k++)
            job(d);
        CHECK_EQ(d->irqs, d->expect);
        CHECK_EQ(d->bad_status, 0);
        CHECK_EQ(rd(d, COMPLETIONS), d->jobs);
        CHECK_EQ(pci_read16(d->bdf, PCI_STATUS) & PCI_STATUS_INTX, 0); /* acknowledged: line low */

        /* Interrupt Disable holds the line low; status bit 3 still shows the request. */
        settle(2); /* let late (spurious) deliveries of the last interrupt in first */
        u16 cmd = pci_read16(d->bdf, PCI_COMMAND);
        pci_write16(d->bdf, PCI_COMMAND, cmd | PCI_CMD_INTX_DISABLE);
        d->held = 1;
        ring(d);
        d->jobs++;
        for (u32 t = 0; t < MAX_TICKS && !(pci_read16(d->bdf, PCI_STATUS) & PCI_STATUS_INTX); t++)
            settle(1);
        settle(1);
        CHECK_EQ(pci_read16(d->bdf, PCI_STATUS) & PCI_STATUS_INTX, PCI_STATUS_INTX);
        CHECK_EQ(rd(d, STATUS) & ST_DONE, ST_DONE);
        CHECK_EQ(d->irqs, d->expect);
        CHECK_EQ(d->while_held, 0); /* nothing while disabled */
        u32 want = d->irqs + 1;
        d->held = 0;
        pci_write16(d->bdf, PCI_COMMAND, cmd);
        d->expect++;
        CHECK_EQ(wait_for(&d->irqs, want, MAX_TICKS), 1); /* ... and it comes on enable */
        CHECK_EQ(pci_read16(d->bdf, PCI_STATUS) & PCI_STATUS_INTX, 0);
        printf("intx %s: line %u, %u interrupts for %u jobs, %u spurious\n", d->name,
               pci_read8(d->bdf, PCI_INTERRUPT_LINE), d->irqs, d->jobs, d->spurious);
    }
}

static void msi_tests(void)
{
    struct demo *d = &demos[SLOT_MSI];
    CHECK_EQ(pci_read32(d->bdf, 0x44), MSI_ADDRESS(apic));
    CHECK_EQ(pci_read16(d->bdf, 0x48), d->vector);
    CHECK_EQ(pci_read16(d->bdf, 0x42), 1); /* enabled, one vector */
    for (int k = 0; k < K; k++)
        job(d);
    CHECK_EQ(d->irqs, d->expect);
    CHECK_EQ(d->bad_status, 0);
    CHECK_EQ(rd(d, COMPLETIONS), d->jobs);

    /* MSI off: the job completes, no message (dropped, not latched). */
    pci_msi_disable(d->bdf);
    ring(d);
    d->jobs++;
    wait_status(d, ST_DONE);
    settle(2);
    CHECK_EQ(d->irqs, d->expect);
    wr(d, STATUS, ST_DONE);
    CHECK_EQ(pci_msi_enable(d->bdf, apic, d->vector), 0x40);
    settle(2);
    CHECK_EQ(d->irqs, d->expect);
    job(d);
    CHECK_EQ(d->irqs, d->expect);
    printf("msi %s: %u interrupts for %u jobs\n", d->name, d->irqs, d->jobs);
}

static void msix_tests(void)
{
    struct demo *d = &demos[SLOT_MSIX];
    struct pci_msix *m = &d->msix;
    CHECK_EQ(m->entries, 1);
    CHECK_EQ(m->table, pci_bar_addr(d->bdf, 1));
    CHECK_EQ(m->pba, pci_bar_addr(d->bdf, 1) + 0x80);
    CHECK_EQ(mmio_read32(m->table), MSI_ADDRESS(apic));
    CHECK_EQ(mmio_read32(m->table + 4), 0);
    CHECK_EQ(mmio_read32(m->table + 8), d->vector);
    CHECK_EQ(pci_msix_ctrl(m, 0), 0);
    CHECK_EQ(pci_read16(d->bdf, m->cap + 2), 0x8000); /* enabled, not function-masked, 1 entry */
    for (int k = 0; k < K; k++)
        job(d);
    CHECK_EQ(d->irqs, d->expect);

    /* A masked vector: the job completes, its PBA bit is set, the message waits for the unmask. */
    for (int how = 0; how < 2; how++) {
        if (how == 0)
            pci_msix_mask(m, 0, 1);
        else
            pci_msix_function_mask(m, 1);
        ring(d);
        d->jobs++;
        for (u32 t = 0; t < MAX_TICKS && !pci_msix_pending(m, 0); t++)
            settle(1);
        CHECK_EQ(pci_msix_pending(m, 0), 1);
        CHECK_EQ(rd(d, STATUS) & ST_DONE, ST_DONE);
        settle(1);
        CHECK_EQ(d->irqs, d->expect);
        u32 want = d->irqs + 1;
        if (how == 0)
            pci_msix_mask(m, 0, 0);
        else
            pci_msix_function_mask(m, 0);
        d->expect++;
        CHECK_EQ(wait_for(&d->irqs, want, MAX_TICKS), 1);
        CHECK_EQ(pci_msix_pending(m, 0), 0);
    }

    /* MSI-X off: dropped, not latched; turning it back on sends nothing. */
    pci_msix_enable(m, 0);
    ring(d);
    d->jobs++;
    wait_status(d, ST_DONE);
    settle(2);
    CHECK_EQ(pci_msix_pending(m, 0), 0);
    wr(d, STATUS, ST_DONE);
    pci_msix_enable(m, 1);
    settle(2);
    CHECK_EQ(d->irqs, d->expect);

    /* Move the BAR that holds the table: the entry moves with it. */
    u64 old = m->table;
    pci_bar_move(d->bdf, 1, NEW_MSIX_TABLE);
    pci_msix_init(d->bdf, m);
    CHECK_EQ(m->table, NEW_MSIX_TABLE);
    CHECK_EQ(mmio_read32(m->table + 8), d->vector);
    CHECK_EQ(mmio_read32(old + 8), 0xffffffff);
    job(d);
    CHECK_EQ(d->irqs, d->expect);

    /* Hostile table and PBA accesses: odd sizes, PBA writes, the unused rest of the BAR. */
    CHECK_EQ(mmio_read8(m->table + 8), 0xff);
    CHECK_EQ(mmio_read16(m->table + 8), 0xffff);
    mmio_write16(m->table + 8, 0x1234);
    mmio_write8(m->table + 12, 1);
    CHECK_EQ(mmio_read32(m->table + 2 * 4 + 2), 0xffffffff); /* unaligned dword */
    CHECK_EQ(mmio_read32(m->table + 8), d->vector);
    CHECK_EQ(pci_msix_ctrl(m, 0), 0);
    mmio_write64(m->pba, 1);
    CHECK_EQ(mmio_read64(m->pba), 0);
    CHECK_EQ(mmio_read32(m->table + 0x40), 0xffffffff); /* neither table nor PBA */
    job(d);
    CHECK_EQ(d->irqs, d->expect);
    printf("msix %s: %u interrupts for %u jobs\n", d->name, d->irqs, d->jobs);
}

/* -- 6. DMA ------------------------------------------------------------------------------------------ */
static const char text[] = "Weclome Broiler DMA, Advanced Programmable HypV Controller, CommandWord IOAPIC etc.";
static u8 buf[512] __attribute__((aligned(64)));
static u8 pattern[256] __attribute__((aligned(64)));

/* Program a transfer and run it; returns the STATUS the interrupt handler saw. */
static u32 dma(struct demo *d, u32 src, u32 dst, u32 dir, u32 len)
{
    wr(d, DMA_SRC, src);
    wr(d, DMA_DST, dst);
    wr(d, DMA_DIR, dir);
    wr(d, DMA_LEN, len);
    d->last_status = 0;
    job(d);
    return d->last_status;
}

static void dma_ok(struct demo *d, u32 src, u32 dst, u32 dir, u32 len)
{
    CHECK_EQ(dma(d, src, dst, dir, len), ST_DONE);
    CHECK_EQ(rd(d, ERROR_CODE), 0);
    d->copied += len;
}

static void dma_bad(struct demo *d, u32 src, u32 dst, u32 dir, u32 len, u32 code)
{
    CHECK_EQ(dma(d, src, dst, dir, len), ST_DONE | ST_ERROR);
    CHECK_EQ(rd(d, ERROR_CODE), code);
}

static int all(const volatile u8 *p, u32 n, u8 v)
{
    for (u32 i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static void dma_tests(struct demo *d)
{
    u32 gbuf = (u32)(u64)buf, gpat = (u32)(u64)pattern;
    int big = d->dma_size > 4096;
    u32 far = big ? d->dma_size - 0x100 : 0x800; /* a device offset for our own data */

    /* The registers are plain storage until the doorbell. */
    wr(d, DMA_DIR, 7);
    CHECK_EQ(rd(d, DMA_DIR), 7);

    /* device -> RAM: Broiler's text (or zeros), exactly LEN bytes. */
    memset(buf, 0xaa, sizeof(buf));
    dma_ok(d, 0, gbuf, 0, 128);
    if (big)
        CHECK_EQ(all(buf, 128, 0), 1);
    else {
        CHECK_EQ(memcmp(buf, text, sizeof(text)), 0);
        CHECK_EQ(all(buf + sizeof(text), 128 - sizeof(text), 0), 1);
    }
    CHECK_EQ(all(buf + 128, sizeof(buf) - 128, 0xaa), 1);

    /* RAM -> device, then back to another place in RAM. */
    for (u32 i = 0; i < sizeof(pattern); i++)
        pattern[i] = (u8)(i * 7 + d->bdf);
    dma_ok(d, gpat, far, 1, sizeof(pattern));
    memset(buf, 0xaa, sizeof(buf));
    dma_ok(d, far, gbuf + 64, 0, sizeof(pattern));
    CHECK_EQ(memcmp(buf + 64, pattern, sizeof(pattern)), 0);
    CHECK_EQ(all(buf, 64, 0xaa), 1);
    CHECK_EQ(all(buf + 64 + sizeof(pattern), sizeof(buf) - 64 - sizeof(pattern), 0xaa), 1);
    /* the end of the device buffer is in reach */
    dma_ok(d, d->dma_size - 16, gbuf, 0, 16);
    /* LEN 0 copies nothing and succeeds, whatever the addresses */
    dma_ok(d, 0xfffffff0u, 0xfffffff0u, 0, 0);

    /* Bad DMA: error status and its interrupt, nothing copied anywhere. */
    volatile u8 *edge = (volatile u8 *)(ram_end - 16), *mid = (volatile u8 *)(ram_end - 0x80000);
    for (int i = 0; i < 16; i++)
        edge[i] = mid[i] = 0x5c;
    memset(buf, 0xaa, sizeof(buf));
    dma_bad(d, 0, gbuf, 2, 16, 1);                        /* bad DIR */
    dma_bad(d, 0, gbuf, 0xffffffffu, 16, 1);
    dma_bad(d, d->dma_size - 8, gbuf, 0, 16, 2);          /* past the device buffer */
    dma_bad(d, 0xfffffff8u, gbuf, 0, 16, 2);
    dma_bad(d, 0, gbuf, 0, 0xffffffffu, 2);               /* huge length */
    dma_bad(d, gbuf, 0, 1, 0x80000000u, 2);
    dma_bad(d, 0, (u32)(ram_end - 8), 0, 16, 3);          /* across the end of RAM */
    dma_bad(d, 0, (u32)ram_end, 0, 4, 3);                 /* past it */
    dma_bad(d, 0, 0xc2000000u, 0, 16, 3);                 /* the PCI hole, a BAR */
    dma_bad(d, 0, 0xfee00000u, 0, 4, 3);                  /* the LAPIC */
    dma_bad(d, 0, 0xfffffff0u, 0, 0x20, 3);               /* wrapping past 4 GiB */
    dma_bad(d, (u32)(ram_end - 4), 0, 1, 8, 3);           /* reading across the end of RAM */
    if (big)
        dma_bad(d, 0, (u32)(ram_end - 0x80000), 0, 0x100000, 3); /* 1 MiB, half of it past RAM */
    CHECK_EQ(all(edge, 16, 0x5c), 1);
    CHECK_EQ(all(mid, 16, 0x5c), 1);
    CHECK_EQ(all(buf, sizeof(buf), 0xaa), 1);
    /* ... and the device buffer was not touched by the failed RAM -> device copies */
    dma_ok(d, 0, gbuf, 0, 8);
    CHECK_EQ(big ? all(buf, 8, 0) : !memcmp(buf, text, 8), 1);

    CHECK_EQ(d->irqs, d->expect);
    CHECK_EQ(d->bad_status, 0);
    CHECK_EQ(rd(d, COMPLETIONS), d->jobs);
    printf("dma %s: %u jobs, %u interrupts, %u bytes copied\n", d->name, d->jobs, d->irqs, d->copied);
}

/* -- 7. odd accesses to the register blocks ----------------------------------------------------------- */
static void regs_hostile(void)
{
    struct demo *sp = &demos[SLOT_SYNC_PIO], *am = &demos[SLOT_ASYNC_MMIO], *dm = &demos[SLOT_DMA_MSI];

    /* sync block: other sizes, offsets past the four registers, read-only registers */
    CHECK_EQ(inb((u16)(sp->base + SYNC_SLOT_NUM)), 0xff);
    CHECK_EQ(inl((u16)(sp->base + 0x10)), 0xffffffff);
    outl((u16)(sp->base + SYNC_MIN_FREQ), 0x99);
    outw((u16)(sp->base + SYNC_SLOT_NUM), 0x1234);
    CHECK_EQ(rd(sp, SYNC_MIN_FREQ), 0x10);
    CHECK_EQ(rd(sp, SYNC_SLOT_NUM), 0x55);
    sp->reg_errors += 4;
    /* doorbell block over MMIO: 1- and 8-byte reads of STATUS, a 2-byte ACK (ignored) */
    CHECK_EQ(mmio_read8(am->base + STATUS), 0xff);
    CHECK_EQ(mmio_read64(am->base + COMPLETIONS), 0xffffffffffffffffUL);
    mmio_write16(am->base + STATUS, 1);
    CHECK_EQ(rd(am, COMPLETIONS), am->jobs);
    am->reg_errors += 3;
    /* DMA registers: 4-byte accesses only; offsets that are no register */
    wr(dm, DMA_LEN, 0x10);
    CHECK_EQ(inw((u16)(dm->base + DMA_SRC)), 0xffff);
    outw((u16)(dm->base + DMA_LEN), 5);
    CHECK_EQ(rd(dm, DMA_LEN), 0x10);
    CHECK_EQ(inl((u16)(dm->base + 0x20)), 0xffffffff);
    outl((u16)(dm->base + 0xfc), 1);
    outl((u16)(dm->base + COMPLETIONS), 0); /* read-only */
    CHECK_EQ(rd(dm, COMPLETIONS), dm->jobs);
    dm->reg_errors += 5;
    printf("regs hostile: %u %u %u\n", sp->reg_errors, am->reg_errors, dm->reg_errors);
}

/* -- summary for the host test --------------------------------------------------------------------------- */
static void summary(void)
{
    settle(3); /* late or duplicate interrupts would show up now */
    for (int s = 1; s < NSLOTS; s++) {
        struct demo *d = &demos[s];
        if (d->irq != IRQ_NONE) {
            CHECK_EQ(d->irqs, d->expect);
            CHECK_EQ(d->bad_status, 0);
            CHECK_EQ(rd(d, COMPLETIONS), d->jobs);
            CHECK_EQ(rd(d, STATUS), 0); /* everything acknowledged, nothing busy */
            printf("irqs %s %u\n", d->name, d->irqs);
            if (d->irq == IRQ_INTX)
                printf("spurious %s %u\n", d->name, d->spurious);
        }
        if (d->dma_size)
            printf("copied %s %u\n", d->name, d->copied);
        printf("errors %s %u\n", d->name, d->fn_errors);
        printf("regs %s %u\n", d->name, d->reg_errors);
    }
}

int main(void)
{
    puts("pci_test: start\n");
    find_ram_end();
    enumeration();
    config_hostile();
    setup_interrupts();
    bar_moves();
    bar_hostile();
    intx_tests();
    msi_tests();
    msix_tests();
    for (int s = SLOT_DMA_INTX; s <= SLOT_DMA_BUF; s++)
        dma_tests(&demos[s]);
    regs_hostile();
    summary();
    lapic_timer_stop();
    printf("pci_test: %d failures\n", check_failures);
    return check_failures;
}
