"""The one ELF reader of broiler's loaders (Multiboot and Linux): ELF32 and ELF64, little-endian.

It reads the file header, the program headers, the PT_LOAD segments and the notes of PT_NOTE
segments, and nothing else (no sections, no symbols). Every offset and size the file states is
checked against the file before it is used, so a truncated or corrupt kernel ends in one ConfigError
that says what is wrong ("truncated", "past the end", "wraps around") instead of an IndexError or a
misleading complaint about its format. Which machines and classes a loader accepts is the loader's
business: the reader parses both classes for every machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ConfigError

ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
PF_X = 1

# e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize, e_phnum,
# e_shentsize, e_shnum, e_shstrndx: 52 bytes with e_ident in ELF32, 64 in ELF64
_EHDR = {ELFCLASS32: struct.Struct("<HHIIIIIHHHHHH"), ELFCLASS64: struct.Struct("<HHIQQQIHHHHHH")}
_IDENT_SIZE = 16
# Program header fields in file order differ between the classes (p_flags moves).
_PHDR = {ELFCLASS32: struct.Struct("<IIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQQQ")}
_NOTE_HEADER = struct.Struct("<III")  # namesz, descsz, type (4-byte fields in both classes on x86)


class ElfError(ConfigError):
    """What is wrong with the file, as one line, prefixed with the name the loader gave it."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One PT_LOAD program header whose bytes [offset, offset + filesz) are inside the file."""

    index: int  # the program header's index, for messages
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
class ElfFile:
    bits: int  # 32 or 64
    machine: int
    entry: int  # e_entry as the file states it (often virtual)
    segments: tuple[Segment, ...]  # PT_LOAD with memsz > 0, in file order
    notes: tuple[ElfNote, ...]
    data: bytes = field(repr=False, compare=False)

    @property
    def load_start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def load_end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    def segment_bytes(self, s: Segment) -> bytes:
        return self.data[s.offset : s.offset + s.filesz]

    def physical_entry(self) -> int:
        """e_entry moved into the physical copy of the executable segment that contains it (what
        QEMU's ELF loader does), or e_entry unchanged when no such segment is linked elsewhere."""
        for s in self.segments:
            if s.vaddr != s.paddr and s.flags & PF_X and s.vaddr <= self.entry < s.vaddr + s.filesz:
                return self.entry + s.paddr - s.vaddr
        return self.entry


def _header(data: bytes) -> tuple[int, tuple[int, ...]]:
    """(class, the file header's fields after e_ident), or ElfError."""
    if len(data) < 6 or not data.startswith(b"\x7fELF"):
        raise ElfError("not an ELF file")
    cls = data[4]
    if cls not in _EHDR:
        raise ElfError(f"unknown ELF class {cls} (neither ELF32 nor ELF64)")
    if data[5] != ELFDATA2LSB:
        raise ElfError("not a little-endian ELF file (x86 is little-endian)")
    ehdr = _EHDR[cls]
    need = _IDENT_SIZE + ehdr.size
    if len(data) < need:
        bits = 32 if cls == ELFCLASS32 else 64
        raise ElfError(f"truncated ELF header: the file has {len(data)} bytes, an ELF{bits} header needs {need}")
    return cls, ehdr.unpack_from(data, _IDENT_SIZE)


def _program_headers(data: bytes, cls: int, phoff: int, phentsize: int, phnum: int) -> list[tuple[int, ...]]:
    phdr = _PHDR[cls]
    if phnum == 0:
        return []
    if phentsize < phdr.size:
        raise ElfError(f"program header entries of {phentsize} bytes are smaller than the {phdr.size} they hold")
    end = phoff + phnum * phentsize
    if end > len(data):
        raise ElfError(
            f"truncated file (program headers past its end: {phnum} at {phoff:#x} end at {end:#x}, "
            f"the file has {len(data):#x} bytes)"
        )
    out: list[tuple[int, ...]] = []
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if cls == ELFCLASS32:  # type, offset, vaddr, paddr, filesz, memsz, flags, align
            p_type, offset, vaddr, paddr, filesz, memsz, flags, _align = fields
        else:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
            p_type, flags, offset, vaddr, paddr, filesz, memsz, _align = fields
        out.append((p_type, offset, vaddr, paddr, filesz, memsz, flags))
    return out


def _check_segment(i: int, size: int, bits: int, offset: int, paddr: int, filesz: int, memsz: int) -> None:
    if offset + filesz > size:
        raise ElfError(f"truncated file (segment {i} needs bytes up to {offset + filesz:#x}, the file has {size:#x})")
    if filesz > memsz:
        raise ElfError(f"segment {i} has FileSiz {filesz:#x} > MemSiz {memsz:#x}")
    if paddr + memsz > 1 << bits:
        raise ElfError(f"segment {i} at {paddr:#x} with MemSiz {memsz:#x} wraps around the {bits}-bit address space")


def parse_notes(blob: bytes) -> list[ElfNote]:
    """The notes of one PT_NOTE segment (name and descriptor each padded to 4 bytes). Fewer bytes
    than a note header at the end are alignment padding; a note that claims more bytes than the
    segment has is an error."""
    notes: list[ElfNote] = []
    pos = 0
    while pos + _NOTE_HEADER.size <= len(blob):
        namesz, descsz, ntype = _NOTE_HEADER.unpack_from(blob, pos)
        name_start = pos + _NOTE_HEADER.size
        desc_start = name_start + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > len(blob):
            raise ElfError(f"note at offset {pos:#x} runs past the end of its PT_NOTE segment")
        name = blob[name_start : name_start + namesz].rstrip(b"\0").decode("latin-1")
        notes.append(ElfNote(name, ntype, blob[desc_start:desc_end]))
        pos = desc_start + ((descsz + 3) & ~3)
    return notes


def parse_elf(data: bytes, what: str = "kernel", *, notes: bool = True) -> ElfFile:
    """Read an ELF32 or ELF64 file; ElfError (a ConfigError: "<what>: why", one line) on anything
    out of bounds or malformed. ``notes=False`` skips the notes (a loader that needs none need not
    refuse a file whose notes it would never read)."""
    try:
        return _parse(data, notes)
    except ElfError as exc:
        raise ElfError(f"{what}: {exc}") from None


def _parse(data: bytes, read_notes: bool) -> ElfFile:
    cls, fields = _header(data)
    _type, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_sections = fields
    bits = 32 if cls == ELFCLASS32 else 64
    segments: list[Segment] = []
    notes: list[ElfNote] = []
    for i, (p_type, offset, vaddr, paddr, filesz, memsz, flags) in enumerate(
        _program_headers(data, cls, phoff, phentsize, phnum)
    ):
        if p_type == PT_LOAD and memsz:
            _check_segment(i, len(data), bits, offset, paddr, filesz, memsz)
            segments.append(Segment(i, offset, vaddr, paddr, filesz, memsz, flags))
        elif p_type == PT_NOTE and read_notes:
            if offset + filesz > len(data):
                raise ElfError(f"truncated file (note segment {i} runs past its end)")
            notes.extend(parse_notes(data[offset : offset + filesz]))
    return ElfFile(bits, machine, entry, tuple(segments), tuple(notes), bytes(data))
