/* A tiny kernel and a user program that talk through `syscall` / `sysretq`, the way Linux and its user
 * space do. On KVM-PVM a user-mode `syscall` only works through broiler's syscall assist
 * (broiler/emulate/syscall.py); tests/kvm/test_syscall.py turns it on, hands the assist the three
 * pages SPARE_TABLES.. as page-table pages, and checks what this guest reports.
 *
 * Layout, like Linux: the kernel's entry code runs from a supervisor-only alias of the image at
 * KERNEL_ALIAS (so a `syscall` that did not really reach CPL0 faults there), the user program from the
 * identity map with the user bit set. GDT, TSS, per-CPU GS (hence the `swapgs`s of the entry code) and the
 * way into and out of user mode: lib/ring3.h.
 * Exit value: the number of failed checks (0 = pass). */
#include "ring3.h"

#define SPARE_TABLES 0x90000UL            /* three pages the VMM may use (tests pass them on) */
#define KERNEL_ALIAS 0xffffffff80000000UL /* PML4[511], PDPT[510]: first GiB, supervisor */
#define USER_STACK_TOP 0x600000UL

enum { SYS_WRITE = 1, SYS_GETPID = 39, SYS_REPORT = 100, SYS_EXIT = 60 };

static struct ring3_cpu cpu0;
static u64 pdpt_high[512] __attribute__((aligned(4096)));
static u64 pd_alias[512] __attribute__((aligned(4096)));

/* What the kernel side saw, per syscall. */
volatile u64 sys_count, last_cs, last_ss, last_rflags, last_rcx, last_r11, user_rsp_seen;
volatile u64 report[8];
static char written[64];
static u32 written_len;

/* The entry stub (LSTAR, run from KERNEL_ALIAS); SYS_EXIT goes back to ring3_enter_user's caller. */
__asm__(
    ".text\n"
    ".globl syscall_entry\n"
    "syscall_entry:\n"
    "    swapgs\n"
    "    mov %rsp, user_rsp_seen(%rip)\n"
    "    mov " GS_KERNEL_RSP ", %rsp\n"
    "    push %rcx\n"
    "    push %r11\n"
    "    mov %rcx, last_rcx(%rip)\n"
    "    mov %r11, last_r11(%rip)\n"
    "    mov %cs, %rcx\n"
    "    mov %rcx, last_cs(%rip)\n"
    "    mov %ss, %rcx\n"
    "    mov %rcx, last_ss(%rip)\n"
    "    pushfq\n"
    "    popq last_rflags(%rip)\n"
    "    cmp $60, %rax\n"
    "    je ring3_leave_user\n"
    "    mov %rdx, %rcx\n"
    "    mov %rsi, %rdx\n"
    "    mov %rdi, %rsi\n"
    "    mov %rax, %rdi\n"
    "    call syscall_dispatch\n"
    "    pop %r11\n"
    "    pop %rcx\n"
    "    mov user_rsp_seen(%rip), %rsp\n"
    "    swapgs\n"
    "    sysretq\n");
extern char syscall_entry[];

u64 syscall_dispatch(u64 nr, u64 a0, u64 a1, u64 a2)
{
    (void)a2;
    if (nr == SYS_WRITE) {             /* the kernel reads user memory, as write(2) does */
        const char *s = (const char *)a0;
        for (u64 i = 0; i < a1 && written_len < sizeof(written) - 1; i++)
            written[written_len++] = s[i];
        return a1;
    }
    if (nr == SYS_GETPID) {
        sys_count++;
        return 4242;
    }
    if (nr == SYS_REPORT && a0 < 8) {
        report[a0] = a1;
        return 0;
    }
    return (u64)-38;                   /* -ENOSYS */
}

/* The user program (runs at CPL3 from the identity map). report[0]: sum of 1000 getpid results;
 * [1]: RFLAGS.CF survived a syscall (sysret restores R11); [2]: callee registers survived;
 * [3]: the kernel's answer to an unknown number; [4]: RCX after the syscall = the return address. */
__asm__(
    ".text\n"
    ".globl user_main\n"
    "user_main:\n"
    "    mov $1, %eax\n"
    "    lea hello(%rip), %rdi\n"
    "    mov $hello_len, %esi\n"
    "    syscall\n"
    "    xor %r12, %r12\n"
    "    mov $1000, %r13d\n"
    "2:  mov $39, %eax\n"
    "    syscall\n"
    "    add %rax, %r12\n"
    "    dec %r13d\n"
    "    jnz 2b\n"
    "    mov $100, %eax\n xor %edi, %edi\n mov %r12, %rsi\n syscall\n"
    "    stc\n"
    "    mov $39, %eax\n"
    "    syscall\n"
    "    setc %sil\n movzbl %sil, %esi\n"
    "    mov $100, %eax\n mov $1, %edi\n syscall\n"
    "    mov $0x1111, %rbx\n mov $0x2222, %rbp\n mov $0x3333, %r14\n mov $0x4444, %r15\n"
    "    mov $39, %eax\n syscall\n"
    "    xor %esi, %esi\n"
    "    cmp $0x1111, %rbx\n jne 3f\n cmp $0x2222, %rbp\n jne 3f\n"
    "    cmp $0x3333, %r14\n jne 3f\n cmp $0x4444, %r15\n jne 3f\n"
    "    mov $1, %esi\n"
    "3:  mov $100, %eax\n mov $2, %edi\n syscall\n"
    "    mov $12345, %eax\n syscall\n"
    "    mov %rax, %rsi\n mov $100, %eax\n mov $3, %edi\n syscall\n"
    "    mov $39, %eax\n syscall\n"
    "4:  lea 4b(%rip), %rsi\n"     /* RCX held the address of the instruction after that syscall */
    "    sub %rcx, %rsi\n"
    "    mov $100, %eax\n mov $4, %edi\n syscall\n"
    "    mov $60, %eax\n mov $7, %edi\n syscall\n"
    "    ud2\n"
    ".section .rodata\n"
    "hello: .ascii \"hello from user mode\"\n"
    ".set hello_len, . - hello\n"
    ".text\n");
extern char user_main[];

/* A user program that jumps straight at the trampoline with IOPL 3 in R11 (a hostile user). */
__asm__(
    ".text\n"
    ".globl user_jumper\n"
    "user_jumper:\n"
    "    mov $39, %eax\n"
    "    lea 5f(%rip), %rcx\n"
    "    mov $0x3202, %r11\n"
    "    movabs $0xfffffe8000000000, %rdx\n"
    "    jmp *%rdx\n"
    "5:  pushfq\n pop %rsi\n"
    "    mov $100, %eax\n mov $5, %edi\n syscall\n"
    "    mov $60, %eax\n mov $9, %edi\n syscall\n");
extern char user_jumper[];

static volatile u64 gp_count;
static void on_gp(struct irq_frame *f)
{
    gp_count++;
    f->rip += 2;                       /* skip the faulting wrmsr */
}

/* Before the syscall MSRs are written: a supervisor-only alias of the first GiB at KERNEL_ALIAS, for the
 * kernel's entry code, and the #GP handler for the non-canonical LSTAR below. */
static void setup(void)
{
    set_handler(13, on_gp);
    for (int i = 0; i < 512; i++)
        pd_alias[i] = ((u64)i << 21) | 0x83;
    pdpt_high[510] = (u64)pd_alias | 3;
    ((u64 *)0x1000)[511] = (u64)pdpt_high | 3;
}

int main(void)
{
    u64 entry = KERNEL_ALIAS + (u64)syscall_entry;
    ring3_start(0, setup, &cpu0, sizeof(cpu0), entry);
    CHECK_EQ(rdmsr(MSR_LSTAR), entry);                 /* the guest reads back what it wrote */
    /* Not canonical: hardware raises #GP and keeps LSTAR; so does broiler's assist (its MSR filter sees
     * the write). Without the assist it is up to the host's KVM, and one KVM-PVM release accepted it:
     * report what happened (the test compares it with broiler's host probe) and put LSTAR back. */
    wrmsr(MSR_LSTAR, 0x0000800000000000UL);
    printf("syscall_test: non-canonical LSTAR %s\n", gp_count == 1 ? "raised #GP" : "was accepted");
    if (gp_count == 0)
        wrmsr(MSR_LSTAR, entry);
    CHECK_EQ(rdmsr(MSR_LSTAR), entry);
    CHECK_EQ(rdmsr(MSR_EFER) & 1, 1);                   /* SCE, set by the flat64 contract */

    u64 code = ring3_enter_user((u64)user_main, USER_STACK_TOP, 0, 0);
    CHECK_EQ(code, 7);
    CHECK_EQ(sys_count, 1003);
    CHECK_EQ(report[0], 1000 * 4242UL);
    CHECK_EQ(report[1], 1);
    CHECK_EQ(report[2], 1);
    CHECK_EQ(report[3], (u64)-38);
    CHECK_EQ(report[4], 0);
    CHECK_EQ(last_cs, 0x08);
    CHECK_EQ(last_ss, 0x10);
    CHECK_EQ(last_rflags & RING3_SFMASK, 0);           /* SFMASK applied on entry */
    CHECK_EQ(user_rsp_seen, USER_STACK_TOP);
    CHECK_EQ(written_len, 20);
    CHECK_EQ(memcmp(written, "hello from user mode", 20), 0);

    code = ring3_enter_user((u64)user_jumper, USER_STACK_TOP, 0, 0);
    CHECK_EQ(code, 9);
    CHECK_EQ(last_r11 & 0x3000, 0);                    /* IOPL never reaches the kernel from R11 */
    CHECK_EQ(report[5] & 0x3000, 0);                   /* ... nor user mode after sysret */
    printf("syscall_test: %lu getpid calls, %d failures\n", sys_count, check_failures);
    return check_failures;
}
