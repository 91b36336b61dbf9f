"""vmlinux as an ELF file: what the Linux loader checks on top of broiler/boot/elf.py, the PVH entry
note, and copying the PT_LOAD segments into guest RAM.

vmlinux is linked at virtual 0xffffffff81000000 but its program headers carry the physical load
addresses (p_paddr), which is what goes into guest RAM; e_entry is the physical address of startup_64.
"""

from __future__ import annotations

from ...core.memory import GuestMemory
from ...errors import ConfigError, GuestMemoryError
from ..elf import EM_X86_64, ElfFile
from ..elf import parse_elf as parse_any_elf

XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry: a 32-bit physical address, note name "Xen"


def parse_elf(data: bytes, name: str = "kernel") -> ElfFile:
    """A 64-bit x86 vmlinux with something to load; ConfigError (one line) otherwise."""
    elf = parse_any_elf(data, name)
    if elf.bits != 64:
        raise ConfigError(
            f"{name}: not a 64-bit ELF file (an ELF{elf.bits} kernel): broiler boots the vmlinux of an x86-64 build"
        )
    if elf.machine != EM_X86_64:
        raise ConfigError(f"{name}: ELF machine {elf.machine} is not x86-64")
    if not elf.segments:
        raise ConfigError(f"{name}: ELF file has nothing to load (no PT_LOAD segment)")
    return elf


def pvh_entry(elf: ElfFile) -> int | None:
    """The PVH 32-bit entry point (XEN_ELFNOTE_PHYS32_ENTRY), or None if the kernel has none."""
    for n in elf.notes:
        if n.name == "Xen" and n.type == XEN_ELFNOTE_PHYS32_ENTRY and len(n.desc) >= 4:
            # Linux emits it with _ASM_PTR: 8 bytes on x86-64, 4 on i386; the value is < 4 GiB.
            return int.from_bytes(n.desc[:8], "little") & 0xFFFF_FFFF
    return None


def load_segments(elf: ElfFile, mem: GuestMemory, name: str = "kernel") -> tuple[int, int]:
    """Copy every PT_LOAD segment to its physical address and zero its bss. Returns [start, end)."""
    for s in elf.segments:
        if not mem.contains(s.paddr, s.memsz):
            raise ConfigError(
                f"{name}: segment at {s.paddr:#x}..{s.paddr + s.memsz:#x} is outside guest "
                f"RAM: give the guest more memory (-m)"
            )
    try:
        for s in elf.segments:
            mem.write(s.paddr, elf.segment_bytes(s))
            if s.memsz > s.filesz:
                mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)
    except GuestMemoryError as e:  # contains() said yes, so this is a bug; keep the message clear
        raise ConfigError(f"{name}: {e}") from None
    return elf.load_start, elf.load_end
