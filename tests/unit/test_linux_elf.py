"""ELF64 vmlinux reading and loading into guest RAM."""

from __future__ import annotations

import pytest

from broiler.boot.linux.elf import load_segments, parse_elf, pvh_entry
from broiler.core.memory import GuestMemory, MemoryMap
from broiler.errors import ConfigError
from tests.unit.test_linux_bzimage import PVH_ENTRY, make_elf

MiB = 1 << 20


def test_parse_segments_entry_and_pvh_note() -> None:
    elf = parse_elf(make_elf(entry=0x1000000))
    assert elf.entry == 0x1000000
    assert [(s.paddr, s.filesz, s.memsz) for s in elf.segments] == [(0x1000000, 70, 0x2000), (0x1200000, 4, 0x100)]
    assert elf.segments[0].vaddr == 0xFFFFFFFF81000000
    assert pvh_entry(elf) == PVH_ENTRY
    assert elf.load_start == 0x1000000 and elf.load_end == 0x1200100


def test_no_pvh_note() -> None:
    assert pvh_entry(parse_elf(make_elf(pvh=None))) is None


def test_pvh_note_32_bit_descriptor() -> None:
    import struct

    raw = bytearray(make_elf())
    # Rewrite the 8-byte descriptor of the PVH note as a 4-byte one (what an i386 build emits).
    i = raw.rfind(b"Xen\0")
    struct.pack_into("<I", raw, i - 8, 4)
    raw[i + 4 : i + 12] = struct.pack("<I", 0x123456) + b"\0\0\0\0"
    assert pvh_entry(parse_elf(bytes(raw))) == 0x123456


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not an elf at all" * 10, "not an ELF"),
        (b"\x7fELF\x01\x01" + bytes(100), "not a 64-bit"),
    ],
)
def test_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_elf(data)


def test_truncated_segment() -> None:
    data = make_elf()
    with pytest.raises(ConfigError, match="truncated"):
        parse_elf(data[:200])


def test_wrong_machine() -> None:
    data = bytearray(make_elf())
    data[18] = 3  # EM_386
    with pytest.raises(ConfigError, match="not x86-64"):
        parse_elf(bytes(data))


def test_load_segments_zeroes_bss() -> None:
    mem = GuestMemory(MemoryMap(64 * MiB))
    mem.fill(0x1000000, 0x2000, 0xAA)  # stale bytes where the bss goes
    elf = parse_elf(make_elf())
    start, end = load_segments(elf, mem)
    assert (start, end) == (0x1000000, 0x1200100)
    assert mem.read(0x1000000, 70) == b"\x90" * 64 + b"KERNEL"
    assert mem.read(0x1000000 + 70, 0x2000 - 70) == bytes(0x2000 - 70)
    assert mem.read(0x1200000, 4) == b"DATA"


def test_segment_outside_ram() -> None:
    mem = GuestMemory(MemoryMap(16 * MiB))
    with pytest.raises(ConfigError, match="outside guest RAM"):
        load_segments(parse_elf(make_elf()), mem)
