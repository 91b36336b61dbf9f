"""The CPU state a kernel entry expects, as plain data the machine copies into kvm_regs/kvm_sregs.

Two contracts:

- 64-bit boot protocol (boot.rst, "64-bit BOOT PROTOCOL"): long mode, paging on with an identity
  map covering the kernel, the zero page and the command line; a GDT with flat __BOOT_CS (0x10,
  execute/read) and __BOOT_DS (0x18, read/write); CS = __BOOT_CS, DS = ES = SS = __BOOT_DS;
  interrupts off; RSI = zero page. Entry: bzImage load address + 0x200, or vmlinux's e_entry.
- PVH (xen/include/public/arch-x86/hvm/start_info.h): 32-bit protected mode, paging off, flat 4 GiB
  CS (execute/read) and DS/ES/SS (read/write), TR a 32-bit busy TSS, CR0.PE = 1, CR4 = 0, EFER = 0,
  EBX = hvm_start_info. Entry: the ELF note XEN_ELFNOTE_PHYS32_ENTRY.

``EntryState.memory`` lists the bytes (GDT, page tables) the loader writes before entering.
"""

from __future__ import annotations

import struct

from ...x86 import (
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    PTE_P,
    PTE_PS,
    PTE_RW,
    RFLAGS_RESET,
    SEG_CODE_XR,
    SEG_DATA_RW,
    SEG_TSS_BUSY,
)
from ..entry import EntryState, SegmentState, flat_code, flat_data
from .layout import (
    BOOT_CS,
    BOOT_DS,
    BOOT_STACK_TOP,
    GDT_ADDR,
    GDT_SIZE,
    PD_ADDR,
    PDPT_ADDR,
    PML4_ADDR,
)

BOOT_TSS = 0x20  # GDT slot 4: a 32-bit busy TSS for TR (VMX wants TR usable)
_BOOT_TR = SegmentState(BOOT_TSS, limit=0x67, type=SEG_TSS_BUSY, s=0, db=0, g=0)


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """A legacy 8-byte GDT descriptor. ``access`` = P|DPL|S|type, ``flags`` = G|D/B|L|AVL."""
    return (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
    )


def build_gdt(long_mode: bool) -> bytes:
    """null, null, __BOOT_CS, __BOOT_DS, TSS: the selectors the boot protocol names."""
    code_flags = 0xA if long_mode else 0xC  # G|L for 64-bit code, G|D for 32-bit code
    entries = [
        0,
        0,
        _descriptor(0, 0xFFFFF, 0x90 | SEG_CODE_XR, code_flags),
        _descriptor(0, 0xFFFFF, 0x90 | SEG_DATA_RW, 0xC),
        _descriptor(0, 0x67, 0x80 | SEG_TSS_BUSY, 0x0),
    ]
    gdt = struct.pack(f"<{len(entries)}Q", *entries)
    assert len(gdt) <= GDT_SIZE
    return gdt


def build_identity_page_tables(gib: int = 4) -> list[tuple[int, bytes]]:
    """PML4 -> PDPT -> ``gib`` page directories of 2 MiB pages mapping [0, gib GiB) 1:1.

    2 MiB pages rather than 1 GiB ones: 1 GiB pages need the PDPE1GB CPUID bit, which a CPUID
    profile may hide. The kernel builds its own tables at once; these only have to cover it,
    the zero page and the command line (all below 4 GiB by construction)."""
    pml4 = struct.pack("<Q", PDPT_ADDR | PTE_P | PTE_RW).ljust(4096, b"\0")
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * 4096) | PTE_P | PTE_RW) for i in range(gib)).ljust(4096, b"\0")
    pds = b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_PS) for i in range(gib * 512))
    return [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt), (PD_ADDR, pds)]


def long_mode_entry_state(entry: int, zero_page: int) -> EntryState:
    """The 64-bit boot protocol entry."""
    return EntryState(
        mode="long64",
        rip=entry,
        regs={"rsi": zero_page, "rsp": BOOT_STACK_TOP, "rflags": RFLAGS_RESET},
        cr0=CR0_PE | CR0_ET | CR0_PG,
        cr3=PML4_ADDR,
        cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA,
        cs=flat_code(BOOT_CS, long_mode=True),
        data=flat_data(BOOT_DS),
        tr=_BOOT_TR,
        gdt=(GDT_ADDR, len(build_gdt(True)) - 1),
        idt=(0, 0),
        memory=((GDT_ADDR, build_gdt(True)), *build_identity_page_tables()),
    )


def pvh_entry_state(entry: int, start_info: int) -> EntryState:
    """The PVH 32-bit entry."""
    return EntryState(
        mode="pvh32",
        rip=entry,
        regs={"rbx": start_info, "rsp": BOOT_STACK_TOP, "rflags": RFLAGS_RESET},
        cr0=CR0_PE | CR0_ET,
        cr3=0,
        cr4=0,
        efer=0,
        cs=flat_code(BOOT_CS, long_mode=False),
        data=flat_data(BOOT_DS),
        tr=_BOOT_TR,
        gdt=(GDT_ADDR, len(build_gdt(False)) - 1),
        idt=(0, 0),
        memory=((GDT_ADDR, build_gdt(False)),),
    )
