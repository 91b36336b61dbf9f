/* A model of the -c 2 Linux crash of issue 18 (docs/linux.md §8; tests/kvm/test_syscall.py). The two vCPUs
 * take turns, as an execve that migrated to the other CPU does: the vCPU of round r zeroes one user page-table
 * page that the previous round's address space used (the other vCPU still has that space loaded, as an idle
 * CPU in lazy TLB mode keeps an exited mm), builds a fresh space over it, and reads 8 of its 512 entries in
 * user mode; each read faults and the kernel half fills the entry with DATA[(i + r) % 8], as demand paging
 * does. A read that returns another page's word is a stale translation and is counted.
 * GDT, TSSs, per-CPU GS and the way into and out of user mode: lib/ring3.h.
 * Exit value: the number of failed checks (0 = pass). Run with -c 2. */
#include "ring3.h"

#define ROUNDS 200
#define USER_VA 0x8000000000UL /* PML4[1] */
#define MAGIC 0x7a670000UL

static struct ring3_cpu percpu[2] __attribute__((aligned(64)));
static u64 pml4s[3][512] __attribute__((aligned(4096)));
static u64 pdpts[3][512] __attribute__((aligned(4096)));
static u64 pds[3][512] __attribute__((aligned(4096)));
static u64 pte_page[512] __attribute__((aligned(4096))); /* the page-table page every round reuses */
static u64 data[8][512] __attribute__((aligned(4096)));
volatile u64 bad, first_bad_round = ~0UL, first_bad_value;
static volatile u32 round_done = ~0u, current_round;
volatile u64 faults;

/* The kernel half's system-call entry (LSTAR): the only call is exit, back to ring3_enter_user's caller. */
__asm__(
    ".text\n"
    "pt_entry:\n"
    "    swapgs\n"
    "    jmp ring3_leave_user\n"
    ".globl pt_user\n"
    "pt_user:\n"                            /* R12 = round */
    "    movabs $0x8000000000, %r13\n"
    "    xor %ebx, %ebx\n"
    "1:  imul $61, %ebx, %eax\n and $511, %eax\n"
    "    mov %rax, %rcx\n shl $12, %rcx\n"
    "    mov (%r13,%rcx), %rdx\n"
    "    lea (%rax,%r12), %rsi\n and $7, %esi\n or $0x7a670000, %rsi\n"
    "    cmp %rsi, %rdx\n"
    "    je 2f\n"
    "    lock incq bad(%rip)\n"
    "    mov %r12, first_bad_round(%rip)\n"
    "    mov %rdx, first_bad_value(%rip)\n"
    "2:  inc %ebx\n cmp $8, %ebx\n jb 1b\n"
    "    mov $60, %eax\n xor %edi, %edi\n syscall\n"
    "    ud2\n");
extern char pt_entry[], pt_user[];

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

/* Before any vCPU runs user code: the eight user data pages (every word of page d is MAGIC | d, so a read names
 * the page it came from) and the demand-paging handler. */
static void setup(void)
{
    for (int d = 0; d < 8; d++)
        for (int i = 0; i < 512; i++)
            data[d][i] = MAGIC | (u64)d;
    set_handler(14, on_page_fault);
}

int main(u64 me)
{
    ring3_start(me, setup, percpu, sizeof(percpu[0]), (u64)pt_entry);
    /* Round r runs on vCPU r % 2: it rewrites the shared PTE page and builds a fresh space while the other
     * vCPU still has the previous round's space loaded (idle, as a CPU in lazy TLB mode keeps an exited
     * mm), loads the new space and reads through it in user mode, and keeps it loaded in turn. */
    for (u32 round = me; round < ROUNDS; round += 2) {
        while (round_done + 1 != round)
            cpu_relax();
        prepare_round(round);
        __asm__ volatile("mov %0, %%cr3" ::"r"((u64)pml4s[round % 3]) : "memory");
        ring3_enter_user((u64)pt_user, 0x600000 - me * 0x10000, round, 0);
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
