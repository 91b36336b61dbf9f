"""Multiboot v1 headers: finding one in a kernel image, its flags, and the segments it says to load.

Split from the loader (boot/multiboot.py) so the parsing of a user-supplied file stands apart from
the placement in guest RAM. See that module's docstring for the rules both follow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ConfigError
from .elf import EM_386, EM_X86_64, parse_elf

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002  # EAX at entry
HEADER_SEARCH = 8192  # the header lies in the first 8 KiB, 4-byte aligned

FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
_SUPPORTED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO


@dataclass(frozen=True, slots=True)
class MultibootHeader:
    offset: int  # file offset of the magic
    flags: int
    header_addr: int = 0  # the a.out-kludge fields, valid when flag bit 16 is set
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


@dataclass(frozen=True, slots=True)
class Segment:
    addr: int
    data: bytes
    memsz: int


def find_header(image: bytes) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8 KiB, or None (not a Multiboot image)."""
    limit = min(len(image), HEADER_SEARCH)
    for off in range(0, limit - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            if flags & FLAG_AOUT_KLUDGE:
                if off + 32 > len(image):
                    raise ConfigError(
                        f"Multiboot header at offset {off:#x} is truncated: the file ends "
                        "inside its a.out-kludge address fields"
                    )
                return MultibootHeader(off, flags, *struct.unpack_from("<5I", image, off + 12))
            return MultibootHeader(off, flags)
    return None


def is_multiboot(image: bytes) -> bool:
    try:
        return find_header(image) is not None
    except ConfigError:
        return True  # it is one, just a broken one: let the loader say why


def check_flags(flags: int) -> None:
    unsupported = flags & 0xFFFF & ~_SUPPORTED_REQUIRED
    if unsupported & FLAG_VIDEO_MODE:
        raise ConfigError("Multiboot header requires a video mode (flag bit 2): broiler has no display")
    if unsupported:
        bits = ", ".join(str(b) for b in range(16) if unsupported >> b & 1)
        raise ConfigError(f"Multiboot header requires unsupported features (flag bits {bits})")


def elf_segments(image: bytes) -> tuple[str, int, list[Segment]]:
    """(format, entry, PT_LOAD segments at their physical addresses) of an x86 ELF32/ELF64 file."""
    if not image.startswith(b"\x7fELF"):
        raise ConfigError("Multiboot kernel is neither ELF nor marked with the a.out kludge (flag bit 16)")
    elf = parse_elf(image, "Multiboot kernel", notes=False)
    if elf.machine not in (EM_386, EM_X86_64):
        raise ConfigError(f"Multiboot kernel: ELF machine {elf.machine} is not x86")
    if not elf.segments:
        raise ConfigError("Multiboot kernel: ELF file has no PT_LOAD segment")
    # e_entry is virtual: like QEMU's ELF loader, move it into the code segment's physical copy.
    segments = [Segment(s.paddr, elf.segment_bytes(s), s.memsz) for s in elf.segments]
    return f"elf{elf.bits}", elf.physical_entry(), segments


def aout_segments(image: bytes, h: MultibootHeader) -> list[Segment]:
    """The one segment the a.out-kludge fields describe (QEMU's checks, plus a truncation check)."""
    if h.header_addr < h.load_addr:
        raise ConfigError(f"Multiboot a.out kludge: header_addr {h.header_addr:#x} is below load_addr {h.load_addr:#x}")
    file_start = h.offset - (h.header_addr - h.load_addr)
    if file_start < 0:
        raise ConfigError("Multiboot a.out kludge: load_addr lies before the start of the file")
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise ConfigError(
                f"Multiboot a.out kludge: load_end_addr {h.load_end_addr:#x} is below load_addr {h.load_addr:#x}"
            )
        load_size = h.load_end_addr - h.load_addr
        if file_start + load_size > len(image):
            raise ConfigError(
                f"Multiboot a.out kludge: truncated file (load_end_addr needs "
                f"{file_start + load_size:#x} bytes, the file has {len(image):#x})"
            )
    else:
        load_size = len(image) - file_start
    memsz = load_size
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise ConfigError(
                f"Multiboot a.out kludge: bss_end_addr {h.bss_end_addr:#x} is below the "
                f"end of the loaded image {h.load_addr + load_size:#x}"
            )
        memsz = h.bss_end_addr - h.load_addr
    if memsz == 0:
        raise ConfigError("Multiboot a.out kludge: nothing to load")
    return [Segment(h.load_addr, image[file_start : file_start + load_size], memsz)]
