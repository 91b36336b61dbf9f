/* The pause/resume guest (issue 18): every vCPU counts forever and writes its count to port
 * 0x7000 + 4 * index every N_SPIN iterations of an idle loop, so a test sees 0, 1, 2, ... per vCPU
 * and can tell a pause (no writes, then the next number) from a gap or a repeat. vCPU 0 first rings
 * the async-pio doorbell once, then writes 0: a test that pauses on that 0 pauses with the async
 * device's completion still pending. Never returns: the test ends the VM. */
#include "broiler.h"

#define COUNTER_PORT 0x7000
#define ASYNC_PIO_DOORBELL 0x60a0
#define N_SPIN 1000

int main(u64 me) /* the vCPU index: RDI at entry, main's first argument */
{
    u16 port = (u16)(COUNTER_PORT + 4 * me);
    if (me == 0)
        outw(ASYNC_PIO_DOORBELL, 1); /* the 2-byte width the ioeventfd was registered with */
    for (u32 n = 0;; n++) {
        outl(port, n);
        for (volatile u32 i = 0; i < N_SPIN; i++)
            ;
    }
}
