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

int main(void)
{
    puts("broiler demo guest: 64-bit long mode, CPL0, loaded at 1 MiB\n");
    sync_pio_demo();
    sync_mmio_demo();
    puts("\ndemo done: exiting through isa-debug-exit (port 0xf4) with value 0\n");
    return 0;
}
