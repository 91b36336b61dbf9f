/* The embedded demo guest of `broiler run`: it plays the seed's guest drivers against the demo
 * devices and prints what it read back, so a user sees each IO path at work. */
#include "broiler.h"

#define SYNC_PIO 0x6060
#define SYNC_MMIO 0xd0000000UL

static void sync_pio_demo(void)
{
    puts("\n[sync PIO] device at ports 0x6060-0x606f: every IN/OUT exits to broiler\n");
    printf("  inl(0x6060) SLOT_NUM  = %x\n", inl(SYNC_PIO + 0x0));
    outl(SYNC_PIO + 0x4, 2);
    printf("  outl(2, 0x6064); inl(0x6064) SLOT_SEL = %x\n", inl(SYNC_PIO + 0x4));
    printf("  inl(0x6068) MIN_FREQ  = %x\n", inl(SYNC_PIO + 0x8));
    printf("  inl(0x606c) MAX_FREQ  = %x\n", inl(SYNC_PIO + 0xc));
    outl(SYNC_PIO + 0x8, 0x99);
    printf("  outl(0x99, 0x6068) to read-only MIN_FREQ; reads back %x\n", inl(SYNC_PIO + 0x8));
}

static void sync_mmio_demo(void)
{
    puts("\n[sync MMIO] device at 0xd0000000-0xd000000f: every load/store exits to broiler\n");
    printf("  readl(0xd0000000) SLOT_NUM = %x\n", mmio_read32(SYNC_MMIO + 0x0));
    mmio_write32(SYNC_MMIO + 0x4, 3);
    printf("  writel(3, 0xd0000004); readl SLOT_SEL = %x\n", mmio_read32(SYNC_MMIO + 0x4));
    printf("  readl(0xd0000008) MIN_FREQ = %x\n", mmio_read32(SYNC_MMIO + 0x8));
    printf("  readl(0xd000000c) MAX_FREQ = %x\n", mmio_read32(SYNC_MMIO + 0xc));
    printf("  readb(0xd0000000) (not a register access) = %x\n", mmio_read8(SYNC_MMIO));
}

/* One handler for both async devices: which one interrupted is told by the vector. */
static volatile u32 irqs_taken[2];
static u32 demo_irq[2];
static const u64 async_base[2] = {0x60a0, 0xd0000040UL};

static u32 async_read(int i, u32 off)
{
    return i == 0 ? inl((u16)(async_base[0] + off)) : mmio_read32(async_base[1] + off);
}

static void async_write(int i, u32 off, u32 v)
{
    if (i == 0)
        outl((u16)(async_base[0] + off), v);
    else
        mmio_write32(async_base[1] + off, v);
}

static void demo_handler(struct irq_frame *f)
{
    int i = f->vector == PIC_VECTOR_BASE + demo_irq[0] ? 0 : 1;
    u32 status = async_read(i, 0x8);
    async_write(i, 0x8, 1); /* acknowledge: lowers the line */
    irqs_taken[i]++;
    printf("  interrupt: vector %lx, STATUS %x -> acknowledged, EOI\n", f->vector, status);
    pic_eoi((u8)demo_irq[i]);
}

static void async_demo(int i)
{
    demo_irq[i] = async_read(i, 0x4);
    printf("  IRQ_NUM = %u; routed through the 8259 PIC\n", demo_irq[i]);
    set_handler((u8)(PIC_VECTOR_BASE + demo_irq[i]), demo_handler);
    pic_unmask((u8)demo_irq[i]);
    for (u32 k = 1; k <= 2; k++) {
        printf("  doorbell %u (%s), then hlt until the completion interrupt\n", k,
               i == 0 ? "outw(1, 0x60a0)" : "writel(1, 0xd0000040)");
        if (i == 0)
            outw(0x60a0, 1);
        else
            mmio_write32(async_base[1], 1);
        wait_for(&irqs_taken[i], k, 1000000);
    }
    printf("  COMPLETIONS = %u\n", async_read(i, 0xc));
}

static void async_pio_demo(void)
{
    puts("\n[async PIO] device at ports 0x60a0-0x60af: the doorbell is a 2-byte PIO ioeventfd\n");
    idt_init();
    pic_init(0x20, 0x28);
    async_demo(0);
}

static void async_mmio_demo(void)
{
    puts("\n[async MMIO] device at 0xd0000040-0xd000004f: a 4-byte MMIO ioeventfd doorbell\n");
    async_demo(1);
}

static void coalesced_demo(void)
{
    puts("\n[coalesced MMIO] log at 0xd0000080: writes queue in the ring, no exits\n");
    u32 h = 0;
    for (u32 i = 1; i <= 16; i++) {
        mmio_write32(0xd0000080UL, i * i);
        h = h * 31 + i * i;
    }
    printf("  16 writes, then readl COUNT = %u, CHECKSUM = %x (expected %x)\n",
           mmio_read32(0xd0000088UL), mmio_read32(0xd000008cUL), h);
}

static volatile u32 msi_taken;

static void msi_handler(struct irq_frame *f)
{
    (void)f;
    msi_taken++;
    lapic_eoi();
}

static void pci_demo(void)
{
    static struct pci_dev devs[32];
    static char buf[96];
    puts("\n[PCI] bus 0 through configuration mechanism #1 (0xcf8/0xcfc): every access exits\n");
    int n = pci_scan_bus(0, devs, 32);
    for (int i = 0; i < n; i++) {
        const struct pci_dev *d = &devs[i];
        printf("  slot %u  vendor:device %x:%x", PCI_BDF_DEV(d->bdf), d->vendor, d->device);
        if (d->bar[0].size)
            printf("  BAR0 %s %lx+%lx", d->bar[0].kind == PCI_BAR_IO ? "io" : "mem", d->bar[0].addr, d->bar[0].size);
        if (d->irq_pin)
            printf("  INTx line %u", d->irq_line);
        if (pci_find_cap(d->bdf, PCI_CAP_ID_MSI))
            puts("  MSI");
        if (pci_find_cap(d->bdf, PCI_CAP_ID_MSIX))
            puts("  MSI-X");
        putc('\n');
    }
    const struct pci_dev *dma = pci_find(devs, n, 0x1024, 0x1991);
    if (!dma)
        return;
    u16 io = (u16)dma->bar[0].addr;
    puts("\n[PCI DMA] 1024:1991: copy the device buffer into guest RAM, completion by MSI\n");
    lapic_init();
    set_handler(0x50, msi_handler);
    pci_msi_enable(dma->bdf, (u8)lapic_id(), 0x50);
    outl(io + 0x0, 0);                    /* SRC: offset in the device buffer */
    outl(io + 0x4, (u32)(u64)buf);         /* DST: guest-physical address */
    outl(io + 0x8, 0);                    /* DIR 0: device -> guest RAM */
    outl(io + 0xc, sizeof(buf) - 1);       /* LEN */
    outw(io + 0x10, 1);                   /* doorbell: an ioeventfd, no exit */
    wait_for(&msi_taken, 1, 1000000);
    printf("  MSI taken %u time(s), STATUS %x, guest buffer now: \"%s\"\n", msi_taken, inl(io + 0x14), buf);
}

int main(void)
{
    puts("broiler demo guest: 64-bit long mode, CPL0, loaded at 1 MiB\n");
    sync_pio_demo();
    sync_mmio_demo();
    async_pio_demo();
    async_mmio_demo();
    coalesced_demo();
    pci_demo();
    puts("\ndemo done: powering off (\"Shutdown\" to port 0x8900)\n");
    poweroff();
}
