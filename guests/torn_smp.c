/* Are one vCPU's aligned 8-byte stores seen whole by another (single-copy atomicity, SDM vol. 3 §9.1.1)?
 * Linux relies on it: a PTE or a pointer is written with one 8-byte store while another CPU reads it
 * without a lock. vCPU 1 stores words whose 8 bytes are all equal (0x0101..01, 0x0202..02, ...) to one
 * aligned word; vCPU 0 loads it until vCPU 1 is done and counts loads whose bytes differ (a torn store).
 * Both run at CPL0, which on KVM-PVM means both in KVM's instruction emulator (docs/linux.md §8, one of the
 * checks on the -c 2 Linux crash). Run with -c 2. Exit value: the number of failed checks (0 = pass). */
#include "broiler.h"

#define STORES 200000UL
static volatile u64 word __attribute__((aligned(64)));
static volatile u32 go, done;

static int whole(u64 v) { return v == 0x0101010101010101UL * (v & 0xff); }

int main(u64 me)
{
    if (me > 1)
        for (;;)
            __asm__ volatile("cli; hlt");
    if (me == 1) {
        while (!go)
            cpu_relax();
        for (u64 i = 0; i < STORES; i++)
            word = 0x0101010101010101UL * ((i & 0xfe) + 1);
        done = 1;
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    go = 1;
    u64 loads = 0, torn = 0, changes = 0, first = 0, last = 0;
    while (!done) {
        u64 v = word;
        loads++;
        changes += v != last;
        last = v;
        if (!whole(v) && !torn++)
            first = v;
    }
    printf("torn_smp: %lu loads, %lu saw a new value, %lu torn (first %lx)\n", loads, changes, torn, first);
    CHECK_EQ(torn, 0);
    CHECK_EQ(changes > 100, 1); /* the loads overlapped the stores: otherwise nothing was tested */
    return check_failures;
}
