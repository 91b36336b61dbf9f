/* A model of the -c 2 Linux crash of issue 18 (docs/linux.md §8; tests/kvm/test_syscall.py). The two vCPUs
 * take turns, as an execve that migrated to the other CPU does: the vCPU of round r zeroes one user page-table
 * page that the previous round's address space used (the other vCPU still has that space loaded, as an idle
 * CPU in lazy TLB mode keeps an exited mm), builds a fresh space over it, and reads 8 of its 512 entries in
 * user mode; each read faults and the kernel half fills the entry with DATA[(i + r) % 8], as demand paging
 * does. A read that returns another page's word is a stale translation and is counted.
 * Exit value: the number of failed checks (0 = pass). Run with -c 2. */
#include "broiler.h"

#define ROUNDS 200
#define USER_VA 0x8000000000UL /* PML4[1] */
#define MAGIC 0x7a670000UL
#define MSR_GS_BASE 0xc0000101u
#define MSR_KERNEL_GS_BASE 0xc0000102u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u

struct percpu {
    u64 self, cpu, kernel_rsp, user_rsp, saved_ksp;
};
static struct percpu percpu[2] __attribute__((aligned(64)));
static u8 kernel_stacks[2][16384] __attribute__((aligned(16)));
static u64 gdt[10] __attribute__((aligned(16)));
static u8 tss[2][104] __attribute__((aligned(16)));
static u64 pml4s[3][512] __attribute__((aligned(4096)));
static u64 pdpts[3][512] __attribute__((aligned(4096)));
static u64 pds[3][512] __attribute__((aligned(4096)));
static u64 pte_page[512] __attribute__((aligned(4096))); /* the page-table page every round reuses */
static u64 data[8][512] __attribute__((aligned(4096)));
volatile u64 bad, first_bad_round = ~0UL, first_bad_value;
static volatile u32 tables_ready, round_done = ~0u, current_round;
volatile u64 faults;

__asm__(
    ".text\n"
    "pt_entry:\n"
    "    swapgs\n"
    "    mov %gs:32, %rsp\n"                /* only exit exists: back to enter_user's caller */
    "    mov %rdi, %rax\n"
    "    pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "    ret\n"
    ".globl pt_enter_user\n"
    "pt_enter_user:\n"                      /* (rip, rsp, round) */
    "    push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "    mov %rsp, %gs:32\n"
    "    mov %rdx, %r14\n"
    "    swapgs\n"
    "    pushq $0x23\n push %rsi\n pushq $0x2\n pushq $0x2b\n push %rdi\n"
    "    iretq\n"
    ".globl pt_user\n"
    "pt_user:\n"                            /* R14 = round */
    "    movabs $0x8000000000, %r13\n"
    "    xor %ebx, %ebx\n"
    "1:  imul $61, %ebx, %eax\n and $511, %eax\n"
    "    mov %rax, %rcx\n shl $12, %rcx\n"
    "    mov (%r13,%rcx), %rdx\n"
    "    lea (%rax,%r14), %rsi\n and $7, %esi\n or $0x7a670000, %rsi\n"
    "    cmp %rsi, %rdx\n"
    "    je 2f\n"
    "    lock incq bad(%rip)\n"
    "    mov %r14, first_bad_round(%rip)\n"
    "    mov %rdx, first_bad_value(%rip)\n"
    "2:  inc %ebx\n cmp $8, %ebx\n jb 1b\n"
    "    mov $60, %eax\n xor %edi, %edi\n syscall\n"
    "    ud2\n");
extern char pt_entry[], pt_user[];
u64 pt_enter_user(u64 rip, u64 rsp, u64 round);

static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }

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
                     "ltr %1\n" ::"m"(gdtr), "r"(tr) : "rax", "memory");
    struct percpu *p = &percpu[me];
    p->self = (u64)p;
    p->cpu = me;
    p->kernel_rsp = (u64)kernel_stacks[me] + sizeof(kernel_stacks[me]);
    *(u64 *)(tss[me] + 4) = p->kernel_rsp;
    wrmsr(MSR_GS_BASE, (u64)p);
    wrmsr(MSR_KERNEL_GS_BASE, 0);
    wrmsr(MSR_STAR, (0x18UL << 48) | (0x08UL << 32));
    wrmsr(MSR_SFMASK, 0x40700);
    wrmsr(MSR_LSTAR, (u64)pt_entry);
}

static void build(void)
{
    gdt[1] = 0x00af9b000000ffffUL;
    gdt[2] = 0x00cf93000000ffffUL;
    gdt[3] = 0x00cffb000000ffffUL;
    gdt[4] = 0x00cff3000000ffffUL;
    gdt[5] = 0x00affb000000ffffUL;
    for (int c = 0; c < 2; c++) {
        u64 a = (u64)tss[c];
        gdt[6 + 2 * c] = 103 | (a & 0xffffff) << 16 | 0x89UL << 40 | ((a >> 24) & 0xff) << 56;
        gdt[7 + 2 * c] = a >> 32;
    }
    u64 *pml4 = (u64 *)0x1000, *pdpt = (u64 *)0x2000, *pd = (u64 *)0x3000;
    pml4[0] |= 4;
    pdpt[0] |= 4;
    for (int i = 0; i < 512; i++)
        pd[i] |= 4;
    for (int d = 0; d < 8; d++)
        for (int i = 0; i < 512; i++)
            data[d][i] = MAGIC | (u64)d;
}

/* vCPU 0's part of a round: a fresh address space (alternating top levels) over the reused PTE page. */
static void prepare_round(u32 round)
{
    int s = (int)(round % 3); /* neither vCPU has this one loaded */
    for (int i = 0; i < 512; i++)
        pte_page[i] = 0;                    /* "freed" and zeroed, as a new page-table page is; */
    current_round = round;                  /* user reads fault its entries in (on_page_fault) */
    for (int i = 0; i < 512; i++)
        pds[s][i] = pdpts[s][i] = pml4s[s][i] = 0;
    pml4s[s][0] = ((u64 *)0x1000)[0];
    for (int i = 256; i < 512; i++)         /* the kernel half, with the syscall trampoline's slot */
        pml4s[s][i] = ((u64 *)0x1000)[i];
    pml4s[s][1] = (u64)pdpts[s] | 7;
    pdpts[s][0] = (u64)pds[s] | 7;
    pds[s][0] = (u64)pte_page | 7;
}

/* Demand paging as Linux does it: a user read of an empty entry faults, the kernel fills the entry. */
static void on_page_fault(struct irq_frame *f)
{
    u64 cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    u64 index = (cr2 - USER_VA) >> 12;
    if (cr2 < USER_VA || index >= 512 || !(f->cs & 3)) {
        printf("pt_reuse_smp: unexpected #PF at %lx (rip %lx, error %lx)\n", cr2, f->rip, f->error);
        exit(0x7e);
    }
    pte_page[index] = (u64)data[(index + current_round) & 7] | 7;
    faults++;
}

int main(u64 me)
{
    if (me > 1)
        for (;;)
            __asm__ volatile("cli; hlt");
    if (me == 0) {
        idt_init();
        set_handler(14, on_page_fault);
        build();
        tables_ready = 1;
    } else {
        while (!tables_ready)
            cpu_relax();
        idt_init();
    }
    load_cpu(me);
    /* Round r runs on vCPU r % 2: it rewrites the shared PTE page and builds a fresh space while the other
     * vCPU still has the previous round's space loaded (idle, as a CPU in lazy TLB mode keeps an exited
     * mm), loads the new space and reads through it in user mode, and keeps it loaded in turn. */
    for (u32 round = me; round < ROUNDS; round += 2) {
        while (round_done + 1 != round)
            cpu_relax();
        prepare_round(round);
        __asm__ volatile("mov %0, %%cr3" ::"r"((u64)pml4s[round % 3]) : "memory");
        pt_enter_user((u64)pt_user, 0x600000 - me * 0x10000, round);
        round_done = round;
    }
    while (round_done != ROUNDS - 1)
        cpu_relax();
    if (me != 0)
        for (;;)
            __asm__ volatile("cli; hlt");
    printf("pt_reuse_smp: %lu faults\n", faults);
    printf("pt_reuse_smp: %d rounds, %lu stale reads (first in round %ld: %lx)\n", ROUNDS, bad, (long)first_bad_round,
           first_bad_value);
    CHECK_EQ(bad, 0);
    return check_failures;
}
