/* A ring-3 mini-kernel's set-up: GDT, TSSs, per-CPU GS, the syscall MSRs, the user bit on the identity map,
 * and the way into and back out of user mode (ring3.h says what each does). */
#include "ring3.h"

static u64 gdt[6 + 2 * RING3_MAX_CPUS] __attribute__((aligned(16)));
static u8 tss[RING3_MAX_CPUS][104] __attribute__((aligned(16)));
static u8 kernel_stacks[RING3_MAX_CPUS][16384] __attribute__((aligned(16)));
static volatile u32 tables_ready;

/* Its own section, so --gc-sections drops the stubs from the guests that do not run user code. */
__asm__(
    ".section .text.ring3_user, \"ax\", @progbits\n"
    ".globl ring3_enter_user\n"
    "ring3_enter_user:\n"
    "    push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "    mov %rsp, %gs:32\n"
    "    mov %rdx, %r12\n"
    "    mov %rcx, %r13\n"
    "    swapgs\n"                        /* user mode runs with GS base 0, the kernel's in KERNEL_GS_BASE */
    "    pushq $0x23\n push %rsi\n pushq $0x2\n pushq $0x2b\n push %rdi\n"
    "    iretq\n"
    ".globl ring3_leave_user\n"
    "ring3_leave_user:\n"
    "    mov %gs:32, %rsp\n"              /* back to ring3_enter_user's caller, GS still the kernel's */
    "    mov %rdi, %rax\n"
    "    pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "    ret\n"
    ".text\n");

static void tss_descriptor(int slot, u8 *t)
{
    u64 a = (u64)t;
    gdt[slot] = (sizeof(tss[0]) - 1) | (a & 0xffffff) << 16 | 0x89UL << 40 | ((a >> 24) & 0xff) << 56;
    gdt[slot + 1] = a >> 32;
}

static void build_tables(void)
{
    gdt[1] = 0x00af9b000000ffffUL; /* 0x08 kernel code 64 */
    gdt[2] = 0x00cf93000000ffffUL; /* 0x10 kernel data */
    gdt[3] = 0x00cffb000000ffffUL; /* 0x18 user code 32 (STAR's base for sysret) */
    gdt[4] = 0x00cff3000000ffffUL; /* 0x20 user data */
    gdt[5] = 0x00affb000000ffffUL; /* 0x28 user code 64 */
    for (int c = 0; c < RING3_MAX_CPUS; c++)
        tss_descriptor(6 + 2 * c, tss[c]);
    u64 *pml4 = (u64 *)0x1000, *pdpt = (u64 *)0x2000, *pd = (u64 *)0x3000;
    pml4[0] |= 4;
    pdpt[0] |= 4;
    for (int i = 0; i < 512; i++)
        pd[i] |= 4;
}

static void load_cpu(u64 me, struct ring3_cpu *cpu, u64 entry)
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
    cpu->self = (u64)cpu;
    cpu->cpu = me;
    cpu->kernel_rsp = (u64)kernel_stacks[me] + sizeof(kernel_stacks[me]);
    *(u64 *)(tss[me] + 4) = cpu->kernel_rsp; /* RSP0: exceptions from user mode */
    wrmsr(MSR_GS_BASE, (u64)cpu);
    wrmsr(MSR_KERNEL_GS_BASE, 0);
    wrmsr(MSR_STAR, (0x18UL << 48) | (0x08UL << 32));
    wrmsr(MSR_SFMASK, RING3_SFMASK);
    wrmsr(MSR_LSTAR, entry);
}

void ring3_start(u64 me, void (*setup)(void), void *cpus, size_t cpu_size, u64 entry)
{
    if (me >= RING3_MAX_CPUS)
        for (;;)
            __asm__ volatile("cli; hlt");
    if (me == 0) {
        idt_init();
        build_tables();
        if (setup)
            setup();
        tables_ready = 1;
    } else {
        while (!tables_ready)
            cpu_relax();
        idt_init(); /* the same entries again, and IDTR on this vCPU */
    }
    load_cpu(me, (struct ring3_cpu *)((u8 *)cpus + me * cpu_size), entry);
}
