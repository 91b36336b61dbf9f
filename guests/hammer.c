/* A hostile guest: every size at every offset of both sync demo blocks, reads and writes,
 * including accesses that straddle the end of the block. The VMM must keep running and the
 * read-only registers must keep their values. Exit value: number of failed checks. */
#include "broiler.h"

#define SYNC_PIO 0x6060
#define SYNC_MMIO 0xd0000000UL

int main(void)
{
    for (u32 off = 0; off < 0x14; off++) {
        u16 port = (u16)(SYNC_PIO + off);
        outb(port, 0xa5);
        outw(port, 0xa5a5);
        outl(port, 0xa5a5a5a5);
        (void)inb(port);
        (void)inw(port);
        (void)inl(port);
        u64 a = SYNC_MMIO + off;
        mmio_write8(a, 0x5a);
        mmio_write16(a, 0x5a5a);
        mmio_write32(a, 0x5a5a5a5a);
        mmio_write64(a, 0x5a5a5a5a5a5a5a5aUL);
        (void)mmio_read8(a);
        (void)mmio_read16(a);
        (void)mmio_read32(a);
        (void)mmio_read64(a);
    }
    /* Read-only registers intact; read/write ones hold the last aligned 4-byte write. */
    CHECK_EQ(inl(SYNC_PIO + 0x8), 0x10);
    CHECK_EQ(inl(SYNC_PIO + 0xc), 0x40);
    CHECK_EQ(inl(SYNC_PIO + 0x0), 0xa5a5a5a5);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0x8), 0x10);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0xc), 0x40);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0x4), 0x5a5a5a5a);
    printf("hammer: %d failures\n", check_failures);
    return check_failures;
}
