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
from .entry import EntryState, protected_mode_state
from .multiboot_header import (
    BOOTLOADER_MAGIC,
    FLAG_AOUT_KLUDGE,
    HEADER_MAGIC,
    HEADER_SEARCH,
    MultibootHeader,
    Segment,
    aout_segments,
    check_flags,
    elf_segments,
    find_header,
)
from .multiboot_header import is_multiboot as is_multiboot

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


@dataclass
class _Plan:
    """Where the loader's own data goes (decided before a byte is written)."""

    mmap_addr: int
    info_addr: int
    base: int  # module list, then the strings
    strings: list[bytes]
    string_addrs: list[int]
    modules: list[LoadedModule]


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
    check_flags(header.flags)
    if header.flags & FLAG_AOUT_KLUDGE:
        fmt, entry, segments = "a.out kludge", header.entry_addr, aout_segments(image, header)
    else:
        fmt, entry, segments = elf_segments(image)
    low_end = min(mem.map.ram[0].end, _FOUR_GIB)
    spans = sorted((s.addr, s.addr + s.memsz) for s in segments)
    _check_kernel_spans(spans, entry, low_end, [FIRMWARE_AREA, *reserved])
    full_cmdline = f"{kernel_name} {cmdline}"
    plan = _plan(spans, low_end, reserved, modules, full_cmdline)
    mmap = _memory_map(mem)
    mem_lower, mem_upper = _mem_lower_upper(mem)
    info = _info_block(plan, mem_lower, mem_upper, len(modules), len(mmap))
    placements = _write(mem, segments, plan, modules, mmap, info)
    return MultibootImage(
        entry=entry,
        info_addr=plan.info_addr,
        format=fmt,
        header=header,
        kernel_start=spans[0][0],
        kernel_end=spans[-1][1],
        cmdline=full_cmdline,
        modules=tuple(plan.modules),
        mem_lower=mem_lower,
        mem_upper=mem_upper,
        placements=tuple(placements),
    )


def _memory_map(mem: GuestMemory) -> bytes:
    """The e820 map as Multiboot entries (24 bytes, ``size`` = 20), as it must fit below the info block."""
    e820 = mem.map.e820()
    mmap = b"".join(struct.pack("<IQQI", MMAP_ENTRY_SIZE - 4, e.addr, e.size, e.type) for e in e820)
    if len(mmap) > INFO_ADDR - MMAP_ADDR:
        raise ConfigError(f"memory map of {len(e820)} entries does not fit below the information block")
    return mmap


def _info_block(plan: _Plan, mem_lower: int, mem_upper: int, nmods: int, mmap_len: int) -> bytes:
    info = bytearray(INFO_SIZE)
    cmdline_addr, loader_name_addr = plan.string_addrs[-2], plan.string_addrs[-1]
    fields = (INFO_FLAGS, mem_lower, mem_upper, BOOT_DEVICE, cmdline_addr, nmods, plan.base)
    struct.pack_into("<IIIIIII", info, 0, *fields)
    struct.pack_into("<II", info, 44, mmap_len, plan.mmap_addr)
    struct.pack_into("<I", info, 64, loader_name_addr)
    return bytes(info)


def _plan(
    spans: list[tuple[int, int]],
    low_end: int,
    reserved: Sequence[MapRange],
    modules: Sequence[tuple[str, bytes]],
    full_cmdline: str,
) -> _Plan:
    """Everything after the kernel, in QEMU's order: the information page (0x9000 unless the kernel is
    there), the module list and strings, then each module."""
    boot_page_free = not any(_overlap(a, b, BOOT_AREA.start, BOOT_AREA.end) for a, b in spans)
    keep_out = [BOOT_AREA] if boot_page_free else []
    keep_out += [FIRMWARE_AREA, *reserved, *(MapRange(a, b, "kernel") for a, b in spans)]
    alloc = _Allocator(spans[-1][1], low_end, keep_out)
    mmap_addr = MMAP_ADDR if boot_page_free else alloc.take(PAGE, PAGE, "Multiboot information")
    mod_strings = [_cstr(name, f"module name {name!r}") for name, _ in modules]
    strings = [*mod_strings, _cstr(full_cmdline, "kernel command line"), _cstr(LOADER_NAME, "loader name")]
    list_size = MODULE_ENTRY_SIZE * len(modules)
    base = alloc.take(list_size + sum(len(s) for s in strings), PAGE, "Multiboot command lines")
    string_addrs, cursor = [], base + list_size
    for s in strings:
        string_addrs.append(cursor)
        cursor += len(s)
    loaded = []
    for (name, blob), s_addr in zip(modules, string_addrs, strict=False):
        start = alloc.take(len(blob), PAGE, f"module {name}")
        loaded.append(LoadedModule(name, start, start + len(blob), s_addr))
    return _Plan(mmap_addr, mmap_addr + INFO_ADDR - MMAP_ADDR, base, strings, string_addrs, loaded)


def _write(
    mem: GuestMemory,
    segments: Sequence[Segment],
    plan: _Plan,
    modules: Sequence[tuple[str, bytes]],
    mmap: bytes,
    info: bytes,
) -> list[Placement]:
    """The kernel (bss zeroed: RAM may be reused), the strings, the modules, the tables; where each went."""
    placements = []
    for seg in segments:
        mem.write(seg.addr, seg.data)
        mem.fill(seg.addr + len(seg.data), seg.memsz - len(seg.data))
        placements.append(Placement(seg.addr, seg.addr + seg.memsz, "kernel"))
    table = b"".join(struct.pack("<IIII", m.start, m.end, m.string_addr, 0) for m in plan.modules)
    data = table + b"".join(plan.strings)
    mem.write(plan.base, data)
    placements.append(Placement(plan.base, plan.base + len(data), "module list and strings"))
    for m, (_, blob) in zip(plan.modules, modules, strict=True):
        mem.write(m.start, blob)
        placements.append(Placement(m.start, m.end, f"module {m.name}"))
    mem.write(plan.mmap_addr, mmap)
    mem.write(plan.info_addr, info)
    placements += [
        Placement(plan.mmap_addr, plan.mmap_addr + len(mmap), "memory map"),
        Placement(plan.info_addr, plan.info_addr + INFO_SIZE, "Multiboot information"),
    ]
    return placements


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
