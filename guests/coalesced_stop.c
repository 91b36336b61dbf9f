/* Writes N values to the coalesced log and ends the VM at once, without reading anything back:
 * the host must still have applied all N, in order, when the VM is gone. */
#include "broiler.h"

int main(void)
{
    mmio_write32(0xd0000080UL + 0x10, 1); /* RESET */
    for (u32 i = 0; i < 150; i++)
        mmio_write32(0xd0000080UL, 1000 + i);
    return 0;
}
