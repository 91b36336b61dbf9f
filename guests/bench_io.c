/* The `broiler bench` guest: one image for every IO path, driven by the host in batches.
 *
 * Protocol (mirrored in broiler/bench/guest.py and bench/floor.c — keep the three in step):
 *
 *   vCPU k (RDI = k at entry; the flat64 loader leaves it 0 for vCPU 0) owns the parameter block
 *   at BENCH_PARAMS + 64 * k:
 *       +0x00 u32 op      what to loop over (OP_* below); OP_STOP ends the guest
 *       +0x08 u64 n       iterations (>= 1)
 *       +0x10 u64 addr    the port or guest-physical address the op touches
 *       +0x18 u32 flag    doorbell ping-pong: the host sets it to 1 when its handler ran
 *   Before every batch the vCPU writes k to BENCH_CTRL_PORT (a sync exit). The host takes the time,
 *   writes the next batch into the block and resumes the guest; so the host sees batch i's end and
 *   batch i+1's start in the same exit, and (t(N2) - t(N1)) / (N2 - N1) is the cost of one operation.
 *
 * The loops are lib/io_loops.h's, shared with multiboot/io_bench.c (the self-timed guest QEMU runs too).
 * BENCH_PARAMS = 0x90000 is free RAM in the flat64 contract: above the stack top (0x80000, the stack
 * grows down) and below the EBDA (0x9FC00), never touched by the loader.
 */
#include "broiler.h"
#include "io_loops.h"

#define BENCH_PARAMS 0x90000UL
#define BENCH_CTRL_PORT 0x6078

enum {
    OP_STOP = 0,
    OP_NOP = 1,        /* the loop alone: dec; jnz */
    OP_PIO_OUT = 2,    /* outl %eax, %dx */
    OP_PIO_IN = 3,     /* inl %dx, %eax */
    OP_MMIO_WRITE = 4, /* movl %eax, (addr) */
    OP_MMIO_READ = 5,  /* movl (addr), %eax */
    OP_PINGPONG = 6,   /* outl to a doorbell port, then spin until the host's handler sets flag */
};

struct params {
    volatile u32 op;
    u32 pad;
    volatile u64 n;
    volatile u64 addr;
    volatile u32 flag;
};

static void run(u32 op, u64 n, u64 addr, volatile u32 *flag)
{
    if (op >= OP_NOP && op <= OP_MMIO_READ) {
        io_loop((enum io_loop)(op - OP_NOP), n, addr); /* OP_NOP..OP_MMIO_READ are io_loop's first five */
        return;
    }
    if (op != OP_PINGPONG)
        return;
    /* One doorbell outstanding at a time: kick, wait for the handler, clear, again. */
    u32 v = 0;
    __asm__ volatile("1: outl %%eax, %%dx\n"
                     "2: movl (%2), %%esi; testl %%esi, %%esi; jz 2b\n"
                     "   movl $0, (%2); dec %0; jnz 1b"
                     : "+c"(n) : "a"(v), "r"(flag), "d"((u16)addr) : "cc", "memory", "rsi");
}

int main(u64 cpu)
{
    struct params *p = (struct params *)(BENCH_PARAMS + 64 * cpu);
    for (;;) {
        outl(BENCH_CTRL_PORT, (u32)cpu);
        u32 op = p->op;
        u64 n = p->n;
        if (op == OP_STOP)
            return 0;
        if (n)
            run(op, n, p->addr, &p->flag);
    }
}
