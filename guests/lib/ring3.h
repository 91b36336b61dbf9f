/* A ring-3 mini-kernel's set-up (lib/ring3.c), shared by the guests that run a user program and take its
 * `syscall`s the way Linux does: syscall_test.c, fsbase_smp.c, pt_reuse_smp.c.
 *
 * GDT as STAR wants it: 0x08 kernel code64, 0x10 kernel data, 0x18 user code32, 0x20 user data, 0x28 user
 * code64, then one TSS per vCPU at 0x30, 0x40 (RSP0 = that vCPU's kernel stack). Each vCPU's GS base is its
 * struct ring3_cpu while it runs kernel code; user mode runs with GS base 0 and the per-CPU block in
 * KERNEL_GS_BASE, so a guest's entry code starts with `swapgs`, as Linux's does.
 *
 * What a guest keeps: its own set-up (ring3_start's setup), its entry code (LSTAR), which ends a user run by
 * jumping to ring3_leave_user, its user program and its checks. */
#ifndef BROILER_RING3_H
#define BROILER_RING3_H

#include "broiler.h"

#define RING3_MAX_CPUS 2

#define MSR_EFER 0xc0000080u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define MSR_FS_BASE 0xc0000100u
#define MSR_GS_BASE 0xc0000101u
#define MSR_KERNEL_GS_BASE 0xc0000102u
#define RING3_SFMASK (0x700u | 0x40000u) /* TF, IF, DF, AC: as Linux masks them, near enough */

/* Per-CPU data, reached through GS in kernel code. A guest that wants more per CPU embeds this first in
 * its own struct and uses the words from %gs:40 on. */
struct ring3_cpu {
    u64 self;       /* its own address, as Linux's per-CPU base */
    u64 cpu;        /* the vCPU's index */
    u64 kernel_rsp; /* top of its kernel stack (also the TSS's RSP0) */
    u64 user_rsp;   /* for entry code: where it keeps the user RSP */
    u64 saved_ksp;  /* ring3_enter_user's RSP, for ring3_leave_user */
};
/* The same offsets, for entry code in assembly ("mov " GS_KERNEL_RSP ", %rsp\n"). */
#define GS_CPU "%gs:8"
#define GS_KERNEL_RSP "%gs:16"
#define GS_USER_RSP "%gs:24"
_Static_assert(__builtin_offsetof(struct ring3_cpu, cpu) == 8, "GS_CPU");
_Static_assert(__builtin_offsetof(struct ring3_cpu, kernel_rsp) == 16, "GS_KERNEL_RSP");
_Static_assert(__builtin_offsetof(struct ring3_cpu, user_rsp) == 24, "GS_USER_RSP");
_Static_assert(__builtin_offsetof(struct ring3_cpu, saved_ksp) == 32, "lib/ring3.c's stubs use %gs:32");
_Static_assert(sizeof(struct ring3_cpu) == 40, "a guest's own per-CPU words start at %gs:40");

static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (u64)hi << 32 | lo;
}

/* Every vCPU's way in, called first thing in main(me). vCPUs from RING3_MAX_CPUS on halt for good. vCPU 0
 * installs the toolkit's IDT (lib/irq.c), builds the GDT and TSS descriptors, sets the user bit on the flat64
 * contract's identity map of the first GiB (PML4[0], PDPT[0], every 2 MiB entry of PD 0x3000) and runs setup
 * (the guest's own, may be 0) while the others wait, which then install the same IDT. Then each vCPU loads the
 * GDT (reloading CS and the data segments), its TSS and CR3 again (so the user bit is seen); GS base = its
 * per-CPU block (filled in here), KERNEL_GS_BASE = 0, STAR, SFMASK = RING3_SFMASK, LSTAR = entry.
 * cpus: the guest's per-CPU array, cpu_size bytes an element, each beginning with a struct ring3_cpu (one
 * element is enough for a guest that runs on vCPU 0 only). */
void ring3_start(u64 me, void (*setup)(void), void *cpus, size_t cpu_size, u64 entry);
/* Run user code at rip on stack rsp, RFLAGS 0x2 (interrupts off), with R12 = a and R13 = b, until the
 * entry code jumps to ring3_leave_user; returns the RDI it had then (the exit code). Callee-saved
 * registers are kept, as a C call keeps them. */
u64 ring3_enter_user(u64 rip, u64 rsp, u64 a, u64 b);
/* Not a function: entry code jumps here, after its `swapgs` (GS must be the kernel's), with RDI = the code
 * for ring3_enter_user to return. */
extern char ring3_leave_user[];

#endif
