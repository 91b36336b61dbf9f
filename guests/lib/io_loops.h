/* The loops the bench guests time: one copy, so guests/bench_io.c (host-timed, under broiler's bench driver)
 * and guests/multiboot/io_bench.c (self-timed, under broiler and QEMU side by side) run the same code.
 * Inline asm so every host sees exactly `op; dec; jnz` (CPL0 code is emulated at ~1 us an instruction on
 * the KVM-PVM hosts, so nothing else may sit in the loop). */
#ifndef IO_LOOPS_H
#define IO_LOOPS_H

enum io_loop {
    IO_LOOP_NOP,       /* the loop alone: dec; jnz */
    IO_LOOP_OUTL,      /* outl %eax, %dx */
    IO_LOOP_INL,       /* inl %dx, %eax */
    IO_LOOP_MOVL_TO,   /* movl %eax, (addr) */
    IO_LOOP_MOVL_FROM, /* movl (addr), %eax */
    IO_LOOP_OUTB,      /* outb %al, %dx (pci-testdev's doorbells are one byte) */
    IO_LOOP_MOVB_TO,   /* movb %al, (addr) */
};

/* n >= 1 iterations of `kind` on port or guest-physical address `addr`. */
static inline __attribute__((always_inline)) void io_loop(enum io_loop kind, u64 n, u64 addr)
{
    u32 v = 0;
    switch (kind) {
    case IO_LOOP_NOP:
        __asm__ volatile("1: dec %0; jnz 1b" : "+c"(n) :: "cc");
        break;
    case IO_LOOP_OUTL:
        __asm__ volatile("1: outl %%eax, %%dx; dec %0; jnz 1b" : "+c"(n) : "a"(v), "d"((u16)addr) : "cc");
        break;
    case IO_LOOP_INL:
        __asm__ volatile("1: inl %%dx, %%eax; dec %0; jnz 1b" : "+c"(n), "+a"(v) : "d"((u16)addr) : "cc");
        break;
    case IO_LOOP_MOVL_TO:
        __asm__ volatile("1: movl %%eax, (%2); dec %0; jnz 1b" : "+c"(n) : "a"(v), "r"(addr) : "cc", "memory");
        break;
    case IO_LOOP_MOVL_FROM:
        __asm__ volatile("1: movl (%2), %%eax; dec %0; jnz 1b" : "+c"(n), "+a"(v) : "r"(addr) : "cc", "memory");
        break;
    case IO_LOOP_OUTB:
        __asm__ volatile("1: outb %%al, %%dx; dec %0; jnz 1b" : "+c"(n) : "a"(v), "d"((u16)addr) : "cc");
        break;
    case IO_LOOP_MOVB_TO:
        __asm__ volatile("1: movb %%al, (%2); dec %0; jnz 1b" : "+c"(n) : "a"(v), "r"(addr) : "cc", "memory");
        break;
    }
}

#endif
