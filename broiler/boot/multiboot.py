"""Multiboot v1 loader (QEMU's ``-kernel`` for test kernels such as kvm-unit-tests), sans-KVM.

``load_multiboot`` finds the header, writes the kernel, the command lines, the modules and the
Multiboot information block into guest RAM, and returns a ``MultibootImage`` saying how to enter it.
Nothing is written until every check has passed, so bad input never leaves half a guest behind.

Layout (QEMU's, hw/i386/multiboot.c + pc-bios/optionrom/multiboot.S, so kernels see the same
addresses under both VMMs):

- 0x9000  the memory map (24-byte entries, ``size`` = 20), ``mmap_addr``
- 0x9500  the information block (88 bytes), EBX at entry
  (when a kernel segment covers any of the page [0x9000, 0xA000) -- a kernel linked below 1 MiB, say
  at 0x8000 -- both move together to the first free page after the kernel, as QEMU puts its boot
  information after the kernel: only what the kernel itself occupies decides)
- from the first page boundary at or after the kernel's end: the module list (16 bytes per module),
  the module strings, the kernel command line, the boot loader name; then every module, each on a
  page boundary (header flag bit 0 is therefore always honoured)

The kernel may not overlap the EBDA/VGA/BIOS area [0x9FC00, 0x100000) nor any range the machine
reserves (ACPI...): those are the only collisions refused. The boot information, strings and modules
skip over them and over every kernel segment. Everything must lie in RAM below the end of low RAM (and so below 4 GiB).

Header flags: bits 0 (page-align modules) and 1 (memory information) are always satisfied. Bit 2
(video mode) cannot be (no display), and the spec says a loader must refuse a required bit (0-15) it
cannot honour, so broiler refuses it; QEMU only warns. Bit 16 selects the a.out-kludge addresses,
which then take precedence over an ELF header (as the spec and QEMU do). Bits 17-31 are optional
and ignored.

Entry state the machine must set (Multiboot spec §3.2): EAX = 0x2BADB002, EBX = ``info_addr``,
EIP = ``entry``; CS a flat 32-bit code segment and DS/ES/FS/GS/SS flat 32-bit data segments
(base 0, limit 4 GiB); CR0.PE = 1, CR0.PG = 0, EFER = 0; EFLAGS = 0x2 (IF and VM clear). GDTR, IDTR
and ESP are undefined: the kernel loads its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.memory import E820_RAM, EBDA_START, HIGH_MEMORY, GuestMemory, MapRange, MiB
from ..errors import ConfigError
from ..inputs import read_input
from .elf import EM_386, EM_X86_64, parse_elf
from .entry import EntryState, protected_mode_state

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002  # EAX at entry
HEADER_SEARCH = 8192  # the header lies in the first 8 KiB, 4-byte aligned

FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
_SUPPORTED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO

# Information block flags we fill, the same set QEMU does.
INFO_MEMORY, INFO_BOOT_DEVICE, INFO_CMDLINE, INFO_MODS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
INFO_MMAP, INFO_LOADER_NAME = 1 << 6, 1 << 9
INFO_FLAGS = INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
BOOT_DEVICE = 0x8000FFFF  # QEMU's value: BIOS disk 0x80, no partition
LOADER_NAME = "broiler"

MMAP_ADDR = 0x9000
INFO_ADDR = 0x9500
INFO_SIZE = 88
MODULE_ENTRY_SIZE = 16
MMAP_ENTRY_SIZE = 24  # u32 size (= 20, not counting itself), u64 addr, u64 len, u32 type
PAGE = 4096

BOOT_AREA = MapRange(MMAP_ADDR, MMAP_ADDR + PAGE, "Multiboot information")
FIRMWARE_AREA = MapRange(EBDA_START, HIGH_MEMORY, "EBDA, VGA and BIOS area")

DEFAULT_RAM = 128 * MiB  # RAM for test kernels when --memory is not given (QEMU's default)

_FOUR_GIB = 1 << 32


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
class Placement:
    """One range of guest RAM the loader wrote: ``[start, end)``."""

    start: int
    end: int
    what: str


@dataclass(frozen=True, slots=True)
class LoadedModule:
    name: str  # the module's string (what --initrd said)
    start: int
    end: int
    string_addr: int


@dataclass(frozen=True, slots=True)
class MultibootImage:
    """What was loaded and how to enter it (see the module docstring for the register state)."""

    entry: int  # EIP
    info_addr: int  # EBX
    format: str  # "elf32", "elf64" or "a.out kludge"
    header: MultibootHeader
    kernel_start: int
    kernel_end: int  # one past the last byte (bss included)
    cmdline: str  # exactly what the kernel sees, kernel name first (as QEMU)
    modules: tuple[LoadedModule, ...]
    mem_lower: int  # KiB
    mem_upper: int  # KiB
    placements: tuple[Placement, ...]
    eax: int = BOOTLOADER_MAGIC

    @property
    def entry_state(self) -> EntryState:
        """The Multiboot machine state (spec §3.2): protected mode, EAX = magic, EBX = the info block."""
        return protected_mode_state(self.entry, regs={"rax": self.eax, "rbx": self.info_addr})


@dataclass(frozen=True, slots=True)
class _Segment:
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


def _check_flags(flags: int) -> None:
    unsupported = flags & 0xFFFF & ~_SUPPORTED_REQUIRED
    if unsupported & FLAG_VIDEO_MODE:
        raise ConfigError("Multiboot header requires a video mode (flag bit 2): broiler has no display")
    if unsupported:
        bits = ", ".join(str(b) for b in range(16) if unsupported >> b & 1)
        raise ConfigError(f"Multiboot header requires unsupported features (flag bits {bits})")


def _elf_segments(image: bytes) -> tuple[str, int, list[_Segment]]:
    """(format, entry, PT_LOAD segments at their physical addresses) of an x86 ELF32/ELF64 file."""
    if not image.startswith(b"\x7fELF"):
        raise ConfigError("Multiboot kernel is neither ELF nor marked with the a.out kludge (flag bit 16)")
    elf = parse_elf(image, "Multiboot kernel", notes=False)
    if elf.machine not in (EM_386, EM_X86_64):
        raise ConfigError(f"Multiboot kernel: ELF machine {elf.machine} is not x86")
    if not elf.segments:
        raise ConfigError("Multiboot kernel: ELF file has no PT_LOAD segment")
    # e_entry is virtual: like QEMU's ELF loader, move it into the code segment's physical copy.
    segments = [_Segment(s.paddr, elf.segment_bytes(s), s.memsz) for s in elf.segments]
    return f"elf{elf.bits}", elf.physical_entry(), segments


def _aout_segments(image: bytes, h: MultibootHeader) -> list[_Segment]:
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
    return [_Segment(h.load_addr, image[file_start : file_start + load_size], memsz)]


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


class _Allocator:
    """Bump allocator over [cursor, limit) that steps over reserved ranges."""

    def __init__(self, cursor: int, limit: int, reserved: Sequence[MapRange]) -> None:
        self.cursor, self.limit, self.reserved = cursor, limit, reserved

    def take(self, size: int, align: int, what: str) -> int:
        addr = -(-self.cursor // align) * align
        moved = True
        while moved:
            moved = False
            for r in self.reserved:
                if _overlap(addr, addr + max(size, 1), r.start, r.end):
                    addr, moved = -(-r.end // align) * align, True
        if addr + size > self.limit:
            raise ConfigError(
                f"{what} ({size} bytes) does not fit in guest RAM below {self.limit:#x}: give the guest more memory"
            )
        self.cursor = addr + size
        return addr


def _mem_lower_upper(mem: GuestMemory) -> tuple[int, int]:
    """mem_lower: RAM at 0 in KiB; mem_upper: RAM contiguous from 1 MiB in KiB (QEMU's ROM rule)."""
    e820 = mem.map.e820()
    lower = next((e.size for e in e820 if e.addr == 0 and e.type == E820_RAM), 0) // 1024
    top, grown = HIGH_MEMORY, True
    while grown:  # the map need not be sorted: restart after every extension
        grown = False
        for e in e820:
            if e.type == E820_RAM and e.addr < _FOUR_GIB and e.addr <= top < e.addr + e.size:
                top, grown = e.addr + e.size, True
    return lower, (top - HIGH_MEMORY) // 1024


def _cstr(text: str, what: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise ConfigError(f"{what} contains a NUL character")
    return data + b"\0"


def _check_kernel_spans(spans: list[tuple[int, int]], entry: int, low_end: int, keep_out: list[MapRange]) -> None:
    """Refuse segments outside low RAM, on firmware or reserved ranges, or on each other; an entry outside."""
    for start, end in spans:
        if end > low_end:
            raise ConfigError(
                f"Multiboot kernel segment [{start:#x}, {end:#x}) lies outside guest RAM "
                f"(RAM below 4 GiB ends at {low_end:#x})"
            )
        for r in keep_out:
            if _overlap(start, end, r.start, r.end):
                raise ConfigError(
                    f"Multiboot kernel segment [{start:#x}, {end:#x}) overlaps the {r.name} [{r.start:#x}, {r.end:#x})"
                )
    for (a0, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise ConfigError(f"Multiboot kernel segments [{a0:#x}, {a1:#x}) and [{b0:#x}, {b1:#x}) overlap")
    if not spans[0][0] <= entry < spans[-1][1]:
        raise ConfigError(f"Multiboot kernel entry point {entry:#x} is outside the loaded image")


def load_multiboot(
    mem: GuestMemory,
    image: bytes,
    *,
    kernel_name: str,
    cmdline: str = "",
    modules: Sequence[tuple[str, bytes]] = (),
    reserved: Sequence[MapRange] = (),
) -> MultibootImage:
    """Load a Multiboot v1 kernel into ``mem``; ``modules`` are (string, contents) pairs.

    The kernel's command line is ``f"{kernel_name} {cmdline}"`` as QEMU builds it (kvm-unit-tests
    takes the first word as argv[0]). ``reserved`` adds ranges (MP table, ACPI...) that neither the
    kernel nor the loader's own data may overlap. Raises ConfigError with one line on bad input.
    """
    header = find_header(image)
    if header is None:
        raise ConfigError(
            f"{kernel_name}: no Multiboot header (magic {HEADER_MAGIC:#x} with a valid "
            f"checksum) in the first {HEADER_SEARCH} bytes"
        )
    _check_flags(header.flags)
    if header.flags & FLAG_AOUT_KLUDGE:
        fmt, entry, segments = "a.out kludge", header.entry_addr, _aout_segments(image, header)
    else:
        fmt, entry, segments = _elf_segments(image)

    low_end = min(mem.map.ram[0].end, _FOUR_GIB)
    spans = sorted((s.addr, s.addr + s.memsz) for s in segments)
    _check_kernel_spans(spans, entry, low_end, [FIRMWARE_AREA, *reserved])
    kernel_start, kernel_end = spans[0][0], spans[-1][1]
    boot_page_free = not any(_overlap(a, b, BOOT_AREA.start, BOOT_AREA.end) for a, b in spans)

    # Plan everything after the kernel, in QEMU's order, before writing a byte.
    keep_out = [BOOT_AREA] if boot_page_free else []
    keep_out += [FIRMWARE_AREA, *reserved, *(MapRange(a, b, "kernel") for a, b in spans)]
    alloc = _Allocator(kernel_end, low_end, keep_out)
    mmap_addr = MMAP_ADDR if boot_page_free else alloc.take(PAGE, PAGE, "Multiboot information")
    info_addr = mmap_addr + INFO_ADDR - MMAP_ADDR
    full_cmdline = f"{kernel_name} {cmdline}"
    mod_strings = [_cstr(name, f"module name {name!r}") for name, _ in modules]
    strings = [*mod_strings, _cstr(full_cmdline, "kernel command line"), _cstr(LOADER_NAME, "loader name")]
    list_size = MODULE_ENTRY_SIZE * len(modules)
    data_size = list_size + sum(len(s) for s in strings)
    base = alloc.take(data_size, PAGE, "Multiboot command lines")
    string_addrs, cursor = [], base + list_size
    for s in strings:
        string_addrs.append(cursor)
        cursor += len(s)
    loaded = []
    for (name, blob), s_addr in zip(modules, string_addrs, strict=False):
        start = alloc.take(len(blob), PAGE, f"module {name}")
        loaded.append(LoadedModule(name, start, start + len(blob), s_addr))
    e820 = mem.map.e820()
    mmap = b"".join(struct.pack("<IQQI", MMAP_ENTRY_SIZE - 4, e.addr, e.size, e.type) for e in e820)
    if len(mmap) > INFO_ADDR - MMAP_ADDR:
        raise ConfigError(f"memory map of {len(e820)} entries does not fit below the information block")
    mem_lower, mem_upper = _mem_lower_upper(mem)
    info = bytearray(INFO_SIZE)
    struct.pack_into(
        "<IIIIIII", info, 0, INFO_FLAGS, mem_lower, mem_upper, BOOT_DEVICE, string_addrs[-2], len(modules), base
    )
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, string_addrs[-1])

    # Write: the kernel (bss zeroed: RAM may be reused), the strings, the modules, the tables.
    placements = []
    for seg in segments:
        mem.write(seg.addr, seg.data)
        mem.fill(seg.addr + len(seg.data), seg.memsz - len(seg.data))
        placements.append(Placement(seg.addr, seg.addr + seg.memsz, "kernel"))
    table = b"".join(struct.pack("<IIII", m.start, m.end, m.string_addr, 0) for m in loaded)
    mem.write(base, table + b"".join(strings))
    placements.append(Placement(base, base + data_size, "module list and strings"))
    for m, (_, blob) in zip(loaded, modules, strict=True):
        mem.write(m.start, blob)
        placements.append(Placement(m.start, m.end, f"module {m.name}"))
    mem.write(mmap_addr, mmap)
    mem.write(info_addr, bytes(info))
    placements += [
        Placement(mmap_addr, mmap_addr + len(mmap), "memory map"),
        Placement(info_addr, info_addr + INFO_SIZE, "Multiboot information"),
    ]
    return MultibootImage(
        entry=entry,
        info_addr=info_addr,
        format=fmt,
        header=header,
        kernel_start=kernel_start,
        kernel_end=kernel_end,
        cmdline=full_cmdline,
        modules=tuple(loaded),
        mem_lower=mem_lower,
        mem_upper=mem_upper,
        placements=tuple(placements),
    )


def load_multiboot_files(
    mem: GuestMemory,
    kernel: str | Path,
    *,
    cmdline: str = "",
    initrds: Sequence[str | Path] = (),
    reserved: Sequence[MapRange] = (),
) -> MultibootImage:
    """``load_multiboot`` from files: one module per ``--initrd``, named by the path as given."""
    image = read_input(kernel, "kernel")
    mods = [(str(p), read_input(p, "initrd", allow_empty=True)) for p in initrds]
    return load_multiboot(mem, image, kernel_name=str(kernel), cmdline=cmdline, modules=mods, reserved=reserved)
