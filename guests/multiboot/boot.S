/* Multiboot v1 entry for the test kernels: 32-bit protected mode, paging off (Multiboot spec §3.2)
 * -> long mode with the first 4 GiB identity-mapped by 2 MiB pages -> mb_main(magic, info).
 * mb_main's return value goes to isa-debug-exit (port 0xf4): process status (v << 1) | 1.
 *
 * Application processors: mbtest.c copies ap_tramp (real-mode code) to AP_TRAMPOLINE = 0x8000 and
 * sends INIT/SIPI/SIPI with vector 0x08. An AP starts there in real mode (CS = 0x0800, IP = 0), loads
 * the kernel's GDT, enters protected mode at ap_entry32, takes the same path to long mode as the BSP
 * and calls ap_main(index) on its own stack, then halts with interrupts off. 0x8000 is a page of
 * conventional memory that neither broiler nor QEMU's Multiboot loader uses: the memory map and the
 * information block are in the next page (0x9000-0x9FFF) and everything else is above 1 MiB.
 *
 * Built twice: as an ELF (the loader reads the program headers) and, with -DMB_AOUT_KLUDGE, as a
 * flat binary whose header carries the a.out-kludge addresses (flag bit 16).
 *
 * Every CPL0 instruction is emulated on KVM-PVM (~1 us each), so the page tables are built by the
 * assembler, not by a loop at run time. */

#define MB_MAGIC        0x1BADB002
#define MB_PAGE_ALIGN   (1 << 0)
#define MB_MEMORY_INFO  (1 << 1)
#define MB_AOUT         (1 << 16)
#ifdef MB_AOUT_KLUDGE
#define MB_FLAGS        (MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_AOUT)
#else
#define MB_FLAGS        (MB_PAGE_ALIGN | MB_MEMORY_INFO)
#endif

#define SEL_CODE64      0x08
#define SEL_DATA        0x10
#define SEL_CODE32      0x18
#define AP_MAX          16              /* APs with a stack of their own; later ones just halt */
#define AP_STACK_SIZE   2048
#define MSR_EFER        0xC0000080
#define EFER_LME        (1 << 8)
#define CR0_PE_PG       0x80000001
#define CR4_PAE         (1 << 5)
#define PTE_P_RW        0x003
#define PDE_2M          0x083           /* present, writable, 2 MiB page */

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef MB_AOUT_KLUDGE
    .long mb_header                     /* header_addr */
    .long __image_start                 /* load_addr: the flat binary's first byte */
    .long __data_end                    /* load_end_addr */
    .long __bss_end                     /* bss_end_addr */
    .long _start                        /* entry_addr */
#endif

    .section .text.boot, "ax"
    .code32
    .globl _start
_start:
    cli
    movl %eax, %edi                     /* mb_main(magic, info): SysV arguments 1 and 2 */
    movl %ebx, %esi
    lgdt gdt_desc
    movl $bsp_long, %ebp
    jmp enter_long_mode

    .globl ap_entry32
ap_entry32:                             /* from ap_tramp: protected mode, the kernel's GDT */
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $ap_long, %ebp

enter_long_mode:                        /* paging on, then continue at %ebp in 64-bit mode */
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PE_PG, %eax
    movl %eax, %cr0
    ljmp $SEL_CODE64, $long_mode

    .code64
long_mode:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl %ebp, %ebp                     /* upper halves are undefined after the mode switch */
    jmp *%rbp

bsp_long:
    movq $stack_top, %rsp
    movl %edi, %edi
    movl %esi, %esi
    cld
    call mb_main
    movw $0xf4, %dx
    outl %eax, %dx
1:  cli
    hlt
    jmp 1b

ap_long:                                /* index = ap_next++; the stack is ap_stacks[index] */
    movl $1, %eax
    lock xaddl %eax, ap_next
    cmpl $AP_MAX, %eax
    jae 1f
    movl %eax, %edi
    leaq 1(%rax), %rsp
    imulq $AP_STACK_SIZE, %rsp
    addq $ap_stacks, %rsp
    cld
    call ap_main
1:  cli
    hlt
    jmp 1b

/* The AP trampoline, copied to a page-aligned address below 1 MiB (it runs there, CS = address >> 4).
 * Only offsets relative to ap_tramp are used inside it. */
    .code16
    .globl ap_tramp, ap_tramp_end
ap_tramp:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdt_desc - ap_tramp
    movl $0x11, %eax                    /* PE | ET; clears CD and NW, which INIT leaves set */
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .align 4
ap_gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:
    .code64

    .section .rodata
    .align 16
gdt:
    .quad 0                             /* null */
    .quad 0x00AF9A000000FFFF            /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF            /* 0x10: flat data, DPL 0 */
    .quad 0x00CF9A000000FFFF            /* 0x18: 32-bit code, for the APs' way up */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .data
    .align 4096
pml4:
    .quad pdpt + PTE_P_RW
    .fill 511, 8, 0
pdpt:
    .quad pd + 0 * 4096 + PTE_P_RW
    .quad pd + 1 * 4096 + PTE_P_RW
    .quad pd + 2 * 4096 + PTE_P_RW
    .quad pd + 3 * 4096 + PTE_P_RW
    .fill 508, 8, 0
pd:                                     /* 4 x 512 entries: 0 .. 4 GiB in 2 MiB pages */
    .set addr, 0
    .rept 2048
    .quad addr + PDE_2M
    .set addr, addr + 0x200000
    .endr

ap_next:
    .long 0

    .section .bss
    .align 16
    .space 16384
stack_top:
ap_stacks:
    .space AP_MAX * AP_STACK_SIZE
