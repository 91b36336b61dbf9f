/* A tiny kernel and a user program that talk through `syscall` / `sysretq`, the way Linux and its user
 * space do. On KVM-PVM a user-mode `syscall` only works through broiler's syscall assist
 * (broiler/emulate/syscall.py); tests/kvm/test_syscall.py turns it on, hands the assist the three
 * pages SPARE_TABLES.. as page-table pages, and checks what this guest reports.
 *
 * Layout, like Linux: the kernel's entry code runs from a supervisor-only alias of the image at
 * KERNEL_ALIAS (so a `syscall` that did not really reach CPL0 faults there), the user program from the
 * identity map with the user bit set. GDT as STAR wants it: 0x08 kernel code, 0x10 kernel data,
 * 0x18 user code32, 0x20 user data, 0x28 user code64, 0x30 TSS.
 * Exit value: the number of failed checks (0 = pass). */
#include "broiler.h"

#define SPARE_TABLES 0x90000UL            /* three pages the VMM may use (tests pass them on) */
#define KERNEL_ALIAS 0xffffffff80000000UL /* PML4[511], PDPT[510]: first GiB, supervisor */
#define USER_STACK_TOP 0x600000UL
#define MSR_EFER 0xc0000080u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define SFMASK (0x700u | 0x40000u)       /* TF, IF, DF, AC: as Linux masks them, near enough */

enum { SYS_WRITE = 1, SYS_GETPID = 39, SYS_REPORT = 100, SYS_EXIT = 60 };

static u64 gdt[8] __attribute__((aligned(16)));
static u8 tss[104] __attribute__((aligned(16)));
static u64 pdpt_high[512] __attribute__((aligned(4096)));
static u64 pd_alias[512] __attribute__((aligned(4096)));
static u8 kernel_stack[16384] __attribute__((aligned(16)));
u64 kernel_stack_top;

/* What the kernel side saw, per syscall. */
volatile u64 sys_count, last_cs, last_ss, last_rflags, last_rcx, last_r11, user_rsp_seen;
volatile u64 report[8];
static char written[64];
static u32 written_len;

/* The entry stub and the way into and out of user mode. */
__asm__(
    ".text\n"
    ".globl syscall_entry\n"
    "syscall_entry:\n"
    "    mov %rsp, user_rsp_seen(%rip)\n"
    "    mov kernel_stack_top(%rip), %rsp\n"
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
    "    cmp $60, %rax\n"             /* exit: back to enter_user's caller, still at CPL0 */
    "    je 1f\n"
    "    mov %rdx, %rcx\n"
    "    mov %rsi, %rdx\n"
    "    mov %rdi, %rsi\n"
    "    mov %rax, %rdi\n"
    "    call syscall_dispatch\n"
    "    pop %r11\n"
    "    pop %rcx\n"
    "    mov user_rsp_seen(%rip), %rsp\n"
    "    sysretq\n"
    "1:  mov saved_ksp(%rip), %rsp\n"
    "    mov %rdi, %rax\n"
    "    pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "    ret\n"
    /* u64 enter_user(u64 rip, u64 rsp): run user code until it calls SYS_EXIT; returns its code */
    ".globl enter_user\n"
    "enter_user:\n"
    "    push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "    mov %rsp, saved_ksp(%rip)\n"
    "    pushq $0x23\n"
    "    push %rsi\n"
    "    pushq $0x2\n"
    "    pushq $0x2b\n"
    "    push %rdi\n"
    "    iretq\n"
    ".data\n"
    "saved_ksp: .quad 0\n"
    ".text\n");
extern char syscall_entry[];
u64 enter_user(u64 rip, u64 rsp);

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

static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (u64)hi << 32 | lo;
}

static volatile u64 gp_count;
static void on_gp(struct irq_frame *f)
{
    gp_count++;
    f->rip += 2;                       /* skip the faulting wrmsr */
}

static void setup_cpu(void)
{
    gdt[1] = 0x00af9b000000ffffUL;     /* 0x08 kernel code 64 */
    gdt[2] = 0x00cf93000000ffffUL;     /* 0x10 kernel data */
    gdt[3] = 0x00cffb000000ffffUL;     /* 0x18 user code 32 */
    gdt[4] = 0x00cff3000000ffffUL;     /* 0x20 user data */
    gdt[5] = 0x00affb000000ffffUL;     /* 0x28 user code 64 */
    u64 t = (u64)tss;
    gdt[6] = (sizeof(tss) - 1) | (t & 0xffffff) << 16 | 0x89UL << 40 | ((t >> 24) & 0xff) << 56;
    gdt[7] = t >> 32;
    kernel_stack_top = (u64)kernel_stack + sizeof(kernel_stack);
    *(u64 *)(tss + 4) = kernel_stack_top;      /* RSP0 for exceptions from user mode */
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (u64)gdt};
    __asm__ volatile("lgdt %0\n"
                     "pushq $0x08\n lea 1f(%%rip), %%rax\n pushq %%rax\n lretq\n1:\n"
                     "mov $0x10, %%ax\n mov %%ax, %%ds\n mov %%ax, %%es\n mov %%ax, %%ss\n"
                     "mov $0x30, %%ax\n ltr %%ax\n" ::"m"(gdtr) : "rax", "memory");

    /* user bit on the identity map of the first GiB; a supervisor alias at KERNEL_ALIAS */
    u64 *pml4 = (u64 *)0x1000, *pdpt = (u64 *)0x2000, *pd = (u64 *)0x3000;
    pml4[0] |= 4;
    pdpt[0] |= 4;
    for (int i = 0; i < 512; i++) {
        pd[i] |= 4;
        pd_alias[i] = ((u64)i << 21) | 0x83;
    }
    pdpt_high[510] = (u64)pd_alias | 3;
    pml4[511] = (u64)pdpt_high | 3;
    __asm__ volatile("mov %%cr3, %%rax\n mov %%rax, %%cr3" ::: "rax", "memory");
}

int main(void)
{
    idt_init();
    set_handler(13, on_gp);
    setup_cpu();

    u64 entry = KERNEL_ALIAS + (u64)syscall_entry;
    wrmsr(MSR_STAR, (0x18UL << 48) | (0x08UL << 32));
    wrmsr(MSR_SFMASK, SFMASK);
    wrmsr(MSR_LSTAR, entry);
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

    u64 code = enter_user((u64)user_main, USER_STACK_TOP);
    CHECK_EQ(code, 7);
    CHECK_EQ(sys_count, 1003);
    CHECK_EQ(report[0], 1000 * 4242UL);
    CHECK_EQ(report[1], 1);
    CHECK_EQ(report[2], 1);
    CHECK_EQ(report[3], (u64)-38);
    CHECK_EQ(report[4], 0);
    CHECK_EQ(last_cs, 0x08);
    CHECK_EQ(last_ss, 0x10);
    CHECK_EQ(last_rflags & SFMASK, 0);                 /* SFMASK applied on entry */
    CHECK_EQ(user_rsp_seen, USER_STACK_TOP);
    CHECK_EQ(written_len, 20);
    CHECK_EQ(memcmp(written, "hello from user mode", 20), 0);

    code = enter_user((u64)user_jumper, USER_STACK_TOP);
    CHECK_EQ(code, 9);
    CHECK_EQ(last_r11 & 0x3000, 0);                    /* IOPL never reaches the kernel from R11 */
    CHECK_EQ(report[5] & 0x3000, 0);                   /* ... nor user mode after sysret */
    printf("syscall_test: %lu getpid calls, %d failures\n", sys_count, check_failures);
    return check_failures;
}
