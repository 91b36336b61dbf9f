/* Two vCPUs, each running a user program that switches its FS base through a system call, the way a
 * Linux program's arch_prctl(ARCH_SET_FS) does, and then reads its TLS through %fs. The kernel half is
 * Linux's in miniature: `swapgs` on entry and exit (per-CPU data through GS, KERNEL_GS_BASE per vCPU),
 * WRMSR FS_BASE, `sysretq` (or `iretq`, as Linux returns from execve) back to user mode. On KVM-PVM the
 * user `syscall` goes through broiler's syscall assist (tests/kvm/test_syscall.py hands it the three
 * pages SPARE_TABLES..), which writes the vCPU's segment state back with KVM_SET_SREGS: this guest checks
 * that no FS or GS base is lost or crosses between the vCPUs on that path (docs/linux.md §8, issue 18).
 *
 * Run with -c 2 (the flat64 contract starts every vCPU at the entry with RDI = its index). GDT, TSSs,
 * per-CPU GS and the way into and out of user mode: lib/ring3.h. Exit value: the number of failed checks
 * (0 = pass). */
#include "ring3.h"

#define SPARE_TABLES 0x90000UL /* three pages the VMM may use (tests pass them on) */
#define USER_STACK_TOP(cpu) (0x600000UL - (cpu) * 0x10000UL)
#define ROUNDS 1000            /* FS switches per vCPU */
enum { SYS_SET_FS = 158, SYS_SET_FS_IRET = 159, SYS_EXIT = 60 };

/* Per-CPU data, reached through GS in the kernel half: lib/ring3.h's, then this guest's counters. */
struct percpu {
    struct ring3_cpu k;
    u64 wrong_gs; /* entries where the user's CPU number disagreed with GS's */
    u64 calls;
};
#define GS_WRONG_GS "%gs:40"
#define GS_CALLS "%gs:48"
_Static_assert(__builtin_offsetof(struct percpu, wrong_gs) == 40 && __builtin_offsetof(struct percpu, calls) == 48,
               "the entry stub's offsets");
static struct percpu percpu[2] __attribute__((aligned(64)));
/* Four TLS pages per vCPU; the first word of each holds its own address (what %fs:0 reads in glibc). */
static u64 tls[2][4][512] __attribute__((aligned(4096)));
volatile u64 bad_fs[2], first_bad[2][2], user_gs_seen[2];
static volatile u32 finished[2];

/* The kernel half's system-call entry (LSTAR); SYS_EXIT goes back to ring3_enter_user's caller. */
__asm__(
    ".text\n"
    ".globl fs_entry\n"
    "fs_entry:\n"
    "    swapgs\n"
    "    mov %rsp, " GS_USER_RSP "\n"
    "    mov " GS_KERNEL_RSP ", %rsp\n"
    "    push %rcx\n push %r11\n"
    "    incq " GS_CALLS "\n"
    "    cmp " GS_CPU ", %r12\n"          /* the user passes its CPU number in R12 */
    "    je 1f\n"
    "    incq " GS_WRONG_GS "\n"
    "1:  cmp $60, %rax\n"
    "    je ring3_leave_user\n"
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
    "    mov " GS_USER_RSP ", %rsp\n"
    "    swapgs\n"
    "    sysretq\n"
    "2:  mov " GS_USER_RSP ", %rax\n"     /* an iretq frame as Linux's exit to user mode builds it */
    "    pushq $0x23\n push %rax\n push %r11\n pushq $0x2b\n push %rcx\n"
    "    xor %eax, %eax\n"
    "    swapgs\n"
    "    iretq\n");
extern char fs_entry[];

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

/* What %fs:0 reads in glibc: the first word of each TLS page holds its own address. */
static void fill_tls(void)
{
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < 4; p++)
            tls[c][p][0] = (u64)&tls[c][p][0];
}

int main(u64 me)
{
    ring3_start(me, fill_tls, percpu, sizeof(percpu[0]), (u64)fs_entry);
    u64 code = ring3_enter_user((u64)user_main, USER_STACK_TOP(me), me, (u64)tls[me][0]);
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
