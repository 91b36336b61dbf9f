/* Two vCPUs ring the async-pio doorbell concurrently, RINGS times each, without waiting; vCPU 0
 * then polls COMPLETIONS until all requests are done. Run with -c 2 (the flat64 contract starts
 * every vCPU at the entry with RDI = its index). */
#include "broiler.h"

#define RINGS 200
static volatile u32 rung[2];

int main(u64 me) /* the vCPU index: RDI at entry, main's first argument */
{
    for (u32 i = 0; i < RINGS; i++)
        outw(0x60a0, 1);
    rung[me] = 1;
    if (me != 0)
        for (;;)
            __asm__ volatile("cli; hlt");
    while (!rung[1])
        cpu_relax();
    u32 done;
    for (u64 spins = 0; (done = inl(0x60a0 + 0xc)) < 2 * RINGS && spins < 100000000; spins++)
        cpu_relax();
    CHECK_EQ(done, 2 * RINGS);
    printf("async_smp: %u completions\n", done);
    return check_failures;
}
