/* Two vCPUs, each running a user program that switches its FS base through a system call, the way a
 * Linux program's arch_prctl(ARCH_SET_FS) does, and then reads its TLS through %fs. The kernel half is
 * Linux's in miniature: `swapgs` on entry and exit (per-CPU data through GS, KERNEL_GS_BASE per vCPU),
 * WRMSR FS_BASE, `sysretq` (or `iretq`, as Linux returns from execve) back to user mode. On KVM-PVM the
 * user `syscall` goes through broiler's syscall assist (tests/kvm/test_syscall.py hands it the three
 * pages SPARE_TABLES..), which writes the vCPU's segment state back with KVM_SET_SREGS: this guest checks
 * that no FS or GS base is lost or crosses between the vCPUs on that path (docs/linux.md §8, issue 18).
 *
 * Run with -c 2 (the flat64 contract starts every vCPU at the entry with RDI = its index). GDT: 0x08
 * kernel code, 0x10 kernel data, 0x18 user code32, 0x20 user data, 0x28 user code64, 0x30 and 0x40 the
 * two TSSs. Exit value: the number of failed checks (0 = pass). */
#include "broiler.h"

#define SPARE_TABLES 0x90000UL /* three pages the VMM may use (tests pass them on) */
#define USER_STACK_TOP(cpu) (0x600000UL - (cpu) * 0x10000UL)
#define ROUNDS 1000            /* FS switches per vCPU */
#define MSR_FS_BASE 0xc0000100u
#define MSR_GS_BASE 0xc0000101u
#define MSR_KERNEL_GS_BASE 0xc0000102u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define SFMASK (0x700u | 0x40000u)

enum { SYS_SET_FS = 158, SYS_SET_FS_IRET = 159, SYS_EXIT = 60 };

/* Per-CPU data, reached through GS in the kernel half (offsets used by the entry stub below). */
struct percpu {
    u64 self;        /* 0: its own address, as Linux's per-CPU base */
    u64 cpu;         /* 8 */
    u64 kernel_rsp;  /* 16 */
    u64 user_rsp;    /* 24 */
    u64 saved_ksp;   /* 32: enter_user's caller */
    u64 wrong_gs;    /* 40: entries where the user's CPU number disagreed with GS's */
    u64 calls;       /* 48 */
};
static struct percpu percpu[2] __attribute__((aligned(64)));
static u8 kernel_stacks[2][16384] __attribute__((aligned(16)));
static u64 gdt[10] __attribute__((aligned(16)));
static u8 tss[2][104] __attribute__((aligned(16)));
/* Four TLS pages per vCPU; the first word of each holds its own address (what %fs:0 reads in glibc). */
static u64 tls[2][4][512] __attribute__((aligned(4096)));
volatile u64 bad_fs[2], first_bad[2][2], user_gs_seen[2];
static volatile u32 tables_ready, finished[2];

__asm__(
    ".text\n"
    ".globl fs_entry\n"
    "fs_entry:\n"
    "    swapgs\n"
    "    mov %rsp, %gs:24\n"
    "    mov %gs:16, %rsp\n"
    "    push %rcx\n push %r11\n"
    "    incq %gs:48\n"
    "    cmp %gs:8, %r12\n"               /* the user passes its CPU number in R12 */
    "    je 1f\n"
    "    incq %gs:40\n"
    "1:  cmp $60, %rax\n"
    "    je 3f\n"
    "    cmp $39, %rax\n"                /* SYS_GETPID leaves FS alone */
    "    je 4f\n"
    "    xor %eax, %eax\n"                /* SYS_SET_FS and SYS_SET_FS_IRET: as arch_prctl(ARCH_SET_FS), */
    "    mov %eax, %fs\n"                 /* a null selector (base 0 on Intel), then FS base = RDI */
    "    mov %rdi, %rax\n"
    "    mov %rdi, %rdx\n shr $32, %rdx\n"
    "    mov $0xc0000100, %ecx\n"
    "    wrmsr\n"
    "4:  pop %r11\n pop %rcx\n"
    "    cmpl $159, %esi\n"               /* RSI = the call number again: leave by iretq */
    "    je 2f\n"
    "    mov %gs:24, %rsp\n"
    "    swapgs\n"
    "    sysretq\n"
    "2:  mov %gs:24, %rax\n"              /* an iretq frame as Linux's exit to user mode builds it */
    "    pushq $0x23\n push %rax\n push %r11\n pushq $0x2b\n push %rcx\n"
    "    xor %eax, %eax\n"
    "    swapgs\n"
    "    iretq\n"
    "3:  mov %gs:32, %rsp\n"             /* back to enter_user's caller, GS still the kernel's */
    "    mov %rdi, %rax\n"
    "    pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "    ret\n"
    /* u64 enter_user(rip, rsp, cpu, tls): run user code (R12 = cpu, R13 = tls) until SYS_EXIT */
    ".globl enter_user\n"
    "enter_user:\n"
    "    push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "    mov %rsp, %gs:32\n"
    "    mov %rdx, %r12\n"
    "    mov %rcx, %r13\n"
    "    swapgs\n"                        /* user mode runs with GS base 0, the kernel's in KERNEL_GS_BASE */
    "    pushq $0x23\n push %rsi\n pushq $0x2\n pushq $0x2b\n push %rdi\n"
    "    iretq\n");
extern char fs_entry[];
u64 enter_user(u64 rip, u64 rsp, u64 cpu, u64 *tls);

/* The user program: R12 = its CPU number, R13 = its TLS pages. Each round picks a page, sets FS to it
 * (by sysretq or, every third round, iretq), reads %fs:0, makes a call that must not change FS and reads
 * %fs:0 again, counting each mismatch into bad_fs[cpu]. Also
 * reads %gs:0 once, which must be the word at address 0 (user GS base 0) and not the kernel's per-CPU. */
__asm__(
    ".text\n"
    ".globl user_main\n"
    "user_main:\n"
    "    xor %r14d, %r14d\n"               /* round */
    "1:  mov %r14, %rax\n and $3, %eax\n shl $12, %rax\n"
    "    lea (%r13,%rax), %rdi\n"          /* the page of this round */
    "    mov %rdi, %r15\n"
    "    mov $158, %eax\n"
    "    imul $0xaaab, %r14d, %edx\n shr $17, %edx\n imul $3, %edx, %edx\n"
    "    cmp %edx, %r14d\n"                /* round % 3 == 0 → leave the kernel by iretq */
    "    jne 2f\n"
    "    mov $159, %eax\n"
    "2:  mov %rax, %rsi\n"
    "    syscall\n"
    "    call check_fs\n"
    "    mov $39, %eax\n mov %eax, %esi\n"  /* a call that must leave FS as it is */
    "    syscall\n"
    "    call check_fs\n"
    "    inc %r14d\n"
    "    cmp $1000, %r14d\n"
    "    jb 1b\n"
    "    mov %gs:0, %rax\n"
    "    lea user_gs_seen(%rip), %rdx\n"
    "    mov %rax, (%rdx,%r12,8)\n"
    "    mov $60, %eax\n mov $7, %edi\n syscall\n"
    "    ud2\n"
    /* %fs:0 must be R15 (the page set last); else count it in bad_fs[R12], first_bad[R12] = {R15, got} */
    "check_fs:\n"
    "    mov %fs:0, %rax\n"
    "    cmp %r15, %rax\n"
    "    je 1f\n"
    "    lea bad_fs(%rip), %rdx\n"
    "    lock incq (%rdx,%r12,8)\n"
    "    lea first_bad(%rip), %rdx\n"
    "    mov %r12, %rcx\n shl $4, %rcx\n"
    "    cmpq $0, 8(%rdx,%rcx)\n"
    "    jne 1f\n"
    "    mov %r15, (%rdx,%rcx)\n"
    "    mov %rax, 8(%rdx,%rcx)\n"
    "1:  ret\n");
extern char user_main[];

static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (u64)hi << 32 | lo;
}

static void tss_descriptor(int slot, u8 *t)
{
    u64 a = (u64)t;
    gdt[slot] = 103 | (a & 0xffffff) << 16 | 0x89UL << 40 | ((a >> 24) & 0xff) << 56;
    gdt[slot + 1] = a >> 32;
}

static void build_tables(void)
{
    gdt[1] = 0x00af9b000000ffffUL;
    gdt[2] = 0x00cf93000000ffffUL;
    gdt[3] = 0x00cffb000000ffffUL;
    gdt[4] = 0x00cff3000000ffffUL;
    gdt[5] = 0x00affb000000ffffUL;
    tss_descriptor(6, tss[0]);
    tss_descriptor(8, tss[1]);
    u64 *pml4 = (u64 *)0x1000, *pdpt = (u64 *)0x2000, *pd = (u64 *)0x3000;
    pml4[0] |= 4;
    pdpt[0] |= 4;
    for (int i = 0; i < 512; i++)
        pd[i] |= 4;
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < 4; p++)
            tls[c][p][0] = (u64)&tls[c][p][0];
}

static void load_cpu(u64 me)
{
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (u64)gdt};
    u16 tr = (u16)(0x30 + me * 0x10);
    __asm__ volatile("lgdt %0\n"
                     "pushq $0x08\n lea 1f(%%rip), %%rax\n pushq %%rax\n lretq\n1:\n"
                     "mov $0x10, %%ax\n mov %%ax, %%ds\n mov %%ax, %%es\n mov %%ax, %%ss\n"
                     "ltr %1\n mov %%cr3, %%rax\n mov %%rax, %%cr3" ::"m"(gdtr), "r"(tr) : "rax", "memory");
    struct percpu *p = &percpu[me];
    p->self = (u64)p;
    p->cpu = me;
    p->kernel_rsp = (u64)kernel_stacks[me] + sizeof(kernel_stacks[me]);
    *(u64 *)(tss[me] + 4) = p->kernel_rsp;
    wrmsr(MSR_GS_BASE, (u64)p);
    wrmsr(MSR_KERNEL_GS_BASE, 0);
    wrmsr(MSR_STAR, (0x18UL << 48) | (0x08UL << 32));
    wrmsr(MSR_SFMASK, SFMASK);
    wrmsr(MSR_LSTAR, (u64)fs_entry);
}

int main(u64 me)
{
    if (me > 1)
        for (;;)
            __asm__ volatile("cli; hlt");
    if (me == 0) {
        idt_init();
        build_tables();
        tables_ready = 1;
    } else {
        while (!tables_ready)
            cpu_relax();
    }
    load_cpu(me);
    u64 code = enter_user((u64)user_main, USER_STACK_TOP(me), me, tls[me][0]);
    finished[me] = 1;
    if (me != 0)
        for (;;)
            __asm__ volatile("cli; hlt");
    while (!finished[1])
        cpu_relax();
    u64 word0;
    __asm__ volatile("mov 0, %0" : "=r"(word0)); /* what user mode's %gs:0 reads with GS base 0 */
    CHECK_EQ(code, 7);
    for (int c = 0; c < 2; c++) {
        printf("fsbase_smp: cpu %d: %lu syscalls, %lu wrong FS (first: wanted %lx got %lx), %lu wrong GS\n", c,
               percpu[c].calls, bad_fs[c], first_bad[c][0], first_bad[c][1], percpu[c].wrong_gs);
        CHECK_EQ(percpu[c].calls, 2 * ROUNDS + 1);
        CHECK_EQ(bad_fs[c], 0);
        CHECK_EQ(percpu[c].wrong_gs, 0);
        CHECK_EQ(user_gs_seen[c], word0);
    }
    CHECK_EQ(rdmsr(MSR_GS_BASE), (u64)&percpu[0]);
    printf("fsbase_smp: %d failures\n", check_failures);
    return check_failures;
}
