/* Writes a pattern at guest-physical 4 GiB (RAM above the PCI hole when run with --mem 5G) and at
 * the top of low RAM; the host test reads both back through GuestMemory. */
#include "broiler.h"

int main(void)
{
    mmio_write64(0x100000000UL, 0x0123456789abcdefUL);
    mmio_write32(0x100000000UL + 8, 0xfeedface);
    CHECK_EQ(mmio_read64(0x100000000UL), 0x0123456789abcdefUL);
    puts("highmem: wrote 4 GiB\n");
    return check_failures;
}
