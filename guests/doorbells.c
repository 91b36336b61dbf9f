/* Doorbell test guest: writes to port 0x6100 and MMIO 0xd0000f00 that the host test has covered
 * with datamatch ioeventfds (values 1 and 2) and a sync device; see tests/kvm/test_async_io.py. */
#include "broiler.h"

int main(void)
{
    outw(0x6100, 1);                  /* datamatch 1: caught by KVM */
    outw(0x6100, 2);                  /* datamatch 2: caught by KVM */
    outw(0x6100, 2);
    outw(0x6100, 3);                  /* no match: exits, reaches the sync device */
    outb(0x6100, 1);                  /* other length: exits too */
    (void)inw(0x6100);                /* reads always exit */
    mmio_write32(0xd0000f00UL, 7);    /* MMIO datamatch 7 */
    mmio_write32(0xd0000f00UL, 8);    /* miss */
    return 0;
}
