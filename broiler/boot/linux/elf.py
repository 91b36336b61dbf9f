"""Minimal ELF64 reader for vmlinux: entry point, PT_LOAD segments, the PVH entry note.

Only what a loader needs. vmlinux is linked at virtual 0xffffffff81000000 but its program headers
carry the physical load addresses (p_paddr), which is what goes into guest RAM; e_entry is the
physical address of startup_64.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...core.memory import GuestMemory
from ...errors import ConfigError, GuestMemoryError

PT_LOAD = 1
PT_NOTE = 4
EM_X86_64 = 62
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry: a 32-bit physical address, note name "Xen"

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True, slots=True)
class Segment:
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class ElfNote:
    name: str
    type: int
    desc: bytes


@dataclass(frozen=True, slots=True)
class ElfImage:
    entry: int
    machine: int
    segments: tuple[Segment, ...]  # PT_LOAD only
    notes: tuple[ElfNote, ...]
    data: bytes = field(repr=False, compare=False)

    @property
    def pvh_entry(self) -> int | None:
        """The PVH 32-bit entry point (XEN_ELFNOTE_PHYS32_ENTRY), or None if the kernel has none."""
        for n in self.notes:
            if n.name == "Xen" and n.type == XEN_ELFNOTE_PHYS32_ENTRY and len(n.desc) >= 4:
                # Linux emits it with _ASM_PTR: 8 bytes on x86-64, 4 on i386; the value is < 4 GiB.
                return int.from_bytes(n.desc[:8], "little") & 0xFFFF_FFFF
        return None

    @property
    def load_start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def load_end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def _parse_notes(blob: bytes) -> list[ElfNote]:
    notes: list[ElfNote] = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
        pos += 12
        name_end = pos + namesz
        desc_start = pos + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > len(blob):
            break
        notes.append(ElfNote(blob[pos:name_end].rstrip(b"\0").decode("latin-1"), ntype, blob[desc_start:desc_end]))
        pos = desc_start + ((descsz + 3) & ~3)
    return notes


def parse_elf(data: bytes, name: str = "kernel") -> ElfImage:
    if len(data) < _EHDR.size or not data.startswith(b"\x7fELF"):
        raise ConfigError(f"{name}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ConfigError(f"{name}: not a 64-bit little-endian ELF (a 32-bit kernel is not supported)")
    (
        _ident,
        _type,
        machine,
        _ver,
        entry,
        phoff,
        _shoff,
        _flags,
        _ehsize,
        phentsize,
        phnum,
        _shentsize,
        _shnum,
        _shstrndx,
    ) = _EHDR.unpack_from(data)
    if machine != EM_X86_64:
        raise ConfigError(f"{name}: ELF machine {machine} is not x86-64")
    if phentsize < _PHDR.size or phoff + phnum * phentsize > len(data):
        raise ConfigError(f"{name}: truncated ELF program headers")
    segs: list[Segment] = []
    notes: list[ElfNote] = []
    for i in range(phnum):
        ptype, pflags, off, vaddr, paddr, filesz, memsz, _align = _PHDR.unpack_from(data, phoff + i * phentsize)
        if ptype not in (PT_LOAD, PT_NOTE):
            continue
        if off + filesz > len(data):
            raise ConfigError(f"{name}: truncated: segment {i} runs past the end of the file")
        if ptype == PT_LOAD:
            if memsz < filesz:
                raise ConfigError(f"{name}: segment {i} has memsz < filesz")
            segs.append(Segment(off, vaddr, paddr, filesz, memsz, pflags))
        else:
            notes.extend(_parse_notes(data[off : off + filesz]))
    if not segs:
        raise ConfigError(f"{name}: ELF file has nothing to load (no PT_LOAD segment)")
    return ElfImage(entry, machine, tuple(segs), tuple(notes), bytes(data))


def load_segments(elf: ElfImage, mem: GuestMemory, name: str = "kernel") -> tuple[int, int]:
    """Copy every PT_LOAD segment to its physical address and zero its bss. Returns [start, end)."""
    for s in elf.segments:
        if not mem.contains(s.paddr, s.memsz):
            raise ConfigError(
                f"{name}: segment at {s.paddr:#x}..{s.paddr + s.memsz:#x} is outside guest "
                f"RAM: give the guest more memory (-m)"
            )
    try:
        for s in elf.segments:
            mem.write(s.paddr, elf.data[s.offset : s.offset + s.filesz])
            if s.memsz > s.filesz:
                mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)
    except GuestMemoryError as e:  # contains() said yes, so this is a bug; keep the message clear
        raise ConfigError(f"{name}: {e}") from None
    return elf.load_start, elf.load_end
