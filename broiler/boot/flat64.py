"""The flat64 contract: how broiler enters a bare guest image (README, "The flat64 contract").

- The raw image is copied to guest-physical 0x100000 (1 MiB) and entered at its first byte.
- 64-bit long mode, CPL0, interrupts disabled (RFLAGS = 0x2).
- Paging on: an identity map of [0, 4 GiB) and of all RAM above 4 GiB, 2 MiB pages, read/write,
  supervisor, cacheable (the PCI hole too: guests map their MMIO by address).
- GDT at 0x500: 0x08 = 64-bit code, 0x10 = data, 0x18 = 32-bit code; all flat. No IDT (limit 0):
  guests that take interrupts install their own (guests/lib/idt.c).
- RSP = 0x80000, growing down; the stack has 448 KiB before it meets the page tables. With -c N,
  vCPU k starts with RDI = k and RSP = 0x80000 - k * AP_STACK_STRIDE (16 KiB each).
- Page tables occupy [0x1000, 0x1000 + 4 KiB × (2 + number of GiB mapped)).

Everything here is data written into guest memory plus an ``EntryState``; ``Machine`` applies it.
"""

from __future__ import annotations

import struct

from ..core.memory import HIGH_MEMORY, HIGH_RAM_START, GiB, GuestMemory, MiB
from ..errors import ConfigError
from ..x86 import (
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_SCE,
    PTE_P,
    PTE_PS,
    PTE_RW,
    RFLAGS_RESET,
)
from .entry import EntryState, flat_code, flat_data

GDT_ADDR = 0x500
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000
STACK_TOP = 0x80000
AP_STACK_STRIDE = 0x4000  # vCPU k's stack top is STACK_TOP - k * AP_STACK_STRIDE
PAGE_TABLE_LIMIT = 0x70000  # page tables must end below the stack's floor

SEL_CODE64, SEL_DATA, SEL_CODE32 = 0x08, 0x10, 0x18
GDT_ENTRIES = (
    0x0000000000000000,  # null
    0x00AF9B000000FFFF,  # 0x08: code, 64-bit (L), present, DPL0, accessed
    0x00CF93000000FFFF,  # 0x10: data, 4 GiB, present, DPL0, writable, accessed
    0x00CF9B000000FFFF,  # 0x18: code, 32-bit (D), present, DPL0
)

FLAT64_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
FLAT64_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT  # SSE allowed: guests are built by an ordinary gcc
FLAT64_EFER = EFER_LME | EFER_LMA | EFER_SCE


def flat64_entry_state(cpu: int = 0) -> EntryState:
    """How vCPU ``cpu`` enters a flat64 image: at its first byte, RDI = ``cpu``, its own stack."""
    return EntryState(
        mode="long64",
        rip=HIGH_MEMORY,
        regs={"rsp": STACK_TOP - cpu * AP_STACK_STRIDE, "rdi": cpu, "rflags": RFLAGS_RESET},
        cr0=FLAT64_CR0,
        cr3=PML4_ADDR,
        cr4=FLAT64_CR4,
        efer=FLAT64_EFER,
        cs=flat_code(SEL_CODE64, long_mode=True),
        data=flat_data(SEL_DATA),
        gdt=(GDT_ADDR, len(GDT_ENTRIES) * 8 - 1),
        idt=(0, 0),
    )


def write_gdt(memory: GuestMemory) -> None:
    memory.write(GDT_ADDR, struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES))


def write_identity_map(memory: GuestMemory, ram_end: int) -> int:
    """Identity-map [0, max(4 GiB, ram_end)) with 2 MiB pages; returns the CR3 value."""
    top = max(4 * GiB, ram_end)
    gigs = (top + GiB - 1) // GiB
    if gigs > 512:
        raise ConfigError("flat64 maps at most 512 GiB")
    if PD_ADDR + gigs * 4096 > PAGE_TABLE_LIMIT:
        raise ConfigError(f"flat64 page tables for {gigs} GiB do not fit below {PAGE_TABLE_LIMIT:#x}")
    memory.write(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | PTE_P | PTE_RW) + bytes(4088))
    pdpt = [PD_ADDR + i * 4096 | PTE_P | PTE_RW for i in range(gigs)] + [0] * (512 - gigs)
    memory.write(PDPT_ADDR, struct.pack("<512Q", *pdpt))
    for g in range(gigs):
        entries = [(g * GiB + i * 2 * MiB) | PTE_P | PTE_RW | PTE_PS for i in range(512)]
        memory.write(PD_ADDR + g * 4096, struct.pack("<512Q", *entries))
    return PML4_ADDR


def load_flat64(memory: GuestMemory, image: bytes) -> EntryState:
    """Copy the image to 1 MiB and build the long-mode environment; returns vCPU 0's entry state."""
    if not image:
        raise ConfigError("the guest image is empty")
    low_end = memory.map.ram[0].end
    if HIGH_MEMORY + len(image) > low_end:
        raise ConfigError(
            f"the guest image ({len(image)} bytes) does not fit in guest RAM "
            f"above 1 MiB (RAM ends at {low_end:#x}); give it more --mem"
        )
    memory.write(HIGH_MEMORY, image)
    write_gdt(memory)
    write_identity_map(memory, max(memory.map.ram_end, HIGH_RAM_START))
    return flat64_entry_state(0)
