/* Entry of every flat64 guest: the VMM has set up long mode, paging, segments and a stack.
 * Clear .bss? No: the image is raw and the VMM zeroes RAM, so .bss is already zero. */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    cld
    call main
    /* main's return value is the debug-exit value: status (v << 1) | 1. */
    movl %eax, %eax
    movw $0xf4, %dx
    outl %eax, %dx
1:  cli
    hlt
    jmp 1b
