"""Completing a user-mode ``syscall`` on hosts whose KVM leaves the guest at CPL3 (KVM-PVM).

Measured on this host (../shared/host-kvm.md, docs/linux.md §7): when a non-PVM guest executes
``syscall`` in user mode, KVM-PVM sets RCX, R11, masks RFLAGS and jumps to LSTAR, but keeps the user
CS/SS, so the kernel's entry code is fetched at CPL3 and faults. Stock Linux user space cannot make a
single system call. broiler completes the instruction itself, with the standard KVM API only:

1. An MSR filter (KVM_X86_SET_MSR_FILTER + KVM_CAP_X86_USER_SPACE_MSR) makes the guest's WRMSR and
   RDMSR of LSTAR exit to broiler. broiler keeps the value the guest wrote (the real entry point) and
   loads LSTAR with TRAMPOLINE_VA instead; RDMSR returns the guest's value, so the guest sees nothing.
2. TRAMPOLINE_VA is mapped, user-accessible and read-only, onto TRAMPOLINE_GPA: a guest-physical page
   with no memory behind it. The mapping is written into the guest's own page tables (the kernel half,
   which every process shares) using page-table pages broiler reserved in the firmware area.
3. A user ``syscall`` then jumps to the trampoline, the instruction fetch finds no memory, and KVM ends
   KVM_RUN with an emulation failure at RIP = TRAMPOLINE_VA. broiler finishes what the hardware would
   have done: CS/SS from STAR (DPL 0), RFLAGS = R11 & ~SFMASK, RIP = the real LSTAR; the guest resumes
   in its entry code at CPL0. The way back (``sysretq``) is run by KVM's own emulator.

On hardware KVM none of this is needed (``syscall`` works natively); if it is switched on anyway, the
trampoline exit arrives at CPL0 and only RIP is redirected.

A guest user program may also jump to the trampoline directly; that is treated as a ``syscall`` from
RCX with the flags in R11, after clearing from R11 the bits user mode cannot hold (IOPL, VM, VIF, VIP),
so the kernel can never be made to return to user mode with more privilege than it had.

This module is KVM-free: the page-table walk works on a read/write interface and the register
arithmetic on plain numbers, so both are unit-tested without /dev/kvm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# syscall_assist imports the MSR numbers and CR4_LA57 from here: the ``as`` keeps them exported.
from ..x86 import CR4_LA57 as CR4_LA57
from ..x86 import MSR_LSTAR as MSR_LSTAR
from ..x86 import MSR_SFMASK as MSR_SFMASK
from ..x86 import MSR_STAR as MSR_STAR
from ..x86 import PAGE_SIZE, PTE_ADDR, PTE_P, PTE_PS, PTE_RW, PTE_US, RFLAGS_FIXED, RFLAGS_RF

# Linux's x86-64 layout leaves [0xfffffe8000000000, 0xffffff0000000000) unused (4- and 5-level):
# a top-level slot of its own (PML4 index 509), far from anything the kernel maps.
TRAMPOLINE_VA = 0xFFFF_FE80_0000_0000

PAGE = PAGE_SIZE  # the name syscall_assist imports from here

# What user mode cannot set in RFLAGS (popf at CPL3 leaves them alone): IOPL, VM, VIF, VIP.
RFLAGS_NOT_USER = (3 << 12) | (1 << 17) | (1 << 19) | (1 << 20)


class TrampolineConflict(Exception):
    """The guest already maps something at TRAMPOLINE_VA (or uses a huge page there)."""


def table_indices(va: int, levels: int) -> list[int]:
    """Page-table indices of ``va`` from the top level down (levels = 4 or 5)."""
    return [(va >> (12 + 9 * level)) & 0x1FF for level in range(levels - 1, -1, -1)]


def install_trampoline(
    read_u64: Callable[[int], int],
    write_u64: Callable[[int, int], None],
    zero_page: Callable[[int], None],
    cr3: int,
    levels: int,
    spare_pages: Sequence[int],
    *,
    va: int = TRAMPOLINE_VA,
    gpa: int,
) -> int:
    """Map ``va`` → ``gpa`` (present, user, read-only, executable) in the tables at ``cr3``.

    Missing tables are taken from ``spare_pages`` (zeroed first); existing ones are followed and get
    the user bit (harmless: access needs it at every level, and no existing leaf below gains it).
    Returns how many spare pages were used. Idempotent: a second call changes nothing.
    Raises TrampolineConflict when ``va`` is already mapped elsewhere or sits in a huge page."""
    table = cr3 & PTE_ADDR
    used = 0
    indices = table_indices(va, levels)
    for depth, index in enumerate(indices):
        slot = table + index * 8
        entry = read_u64(slot)
        leaf = depth == len(indices) - 1
        if leaf:
            wanted = (gpa & PTE_ADDR) | PTE_P | PTE_US
            if entry & PTE_P and entry & PTE_ADDR != gpa & PTE_ADDR:
                raise TrampolineConflict(f"the guest maps {va:#x} to {entry & PTE_ADDR:#x} already")
            if entry != wanted:
                write_u64(slot, wanted)
            return used
        if entry & PTE_P:
            if entry & PTE_PS:
                raise TrampolineConflict(f"the guest maps {va:#x} with a huge page")
            if not entry & PTE_US:
                write_u64(slot, entry | PTE_US)
            table = entry & PTE_ADDR
            continue
        if used >= len(spare_pages):
            raise TrampolineConflict("no spare page-table pages left for the trampoline mapping")
        page = spare_pages[used]
        used += 1
        zero_page(page)
        write_u64(slot, page | PTE_P | PTE_RW | PTE_US)
        table = page
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class SyscallEntry:
    """Register values of a completed ``syscall``: where the kernel's entry code starts."""

    rip: int
    rflags: int
    r11: int
    cs_selector: int  # DPL-0 flat 64-bit code
    ss_selector: int  # DPL-0 flat data
    switch_privilege: bool  # False when the exit came at CPL0 already (hardware KVM): only RIP moves


def complete_syscall(*, cpl: int, r11: int, star: int, sfmask: int, lstar: int) -> SyscallEntry:
    """What the CPU would have done for ``syscall`` (Intel SDM "SYSCALL"), given the state at the
    trampoline exit: RCX already holds the return address; R11 the user's RFLAGS."""
    r11 &= ~RFLAGS_NOT_USER & 0xFFFF_FFFF_FFFF_FFFF
    kernel_cs = (star >> 32) & 0xFFFC
    return SyscallEntry(
        rip=lstar,
        rflags=(r11 & ~sfmask & ~RFLAGS_RF) | RFLAGS_FIXED,
        r11=r11,
        cs_selector=kernel_cs,
        ss_selector=kernel_cs + 8,
        switch_privilege=cpl != 0,
    )
