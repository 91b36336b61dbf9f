from __future__ import annotations

import pytest

from broiler.core.memory import E820_RAM, E820_RESERVED, GiB, GuestMemory, MemoryMap, MiB, parse_size
from broiler.errors import ConfigError, GuestMemoryError


@pytest.mark.parametrize(
    "text, value",
    [("4G", 4 * GiB), ("512M", 512 * MiB), ("64k", 64 << 10), ("0x1000", 0x1000), ("1GiB", GiB), ("100", 100)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "4X", "-1G", "1.5G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_small_guest_has_one_ram_region() -> None:
    m = MemoryMap(256 * MiB)
    assert [(r.start, r.end) for r in m.ram] == [(0, 256 * MiB)]


def test_4g_guest_matches_the_seed() -> None:
    m = MemoryMap(4 * GiB)
    assert [(r.start, r.end) for r in m.ram] == [(0, 0xC000_0000), (0x1_0000_0000, 0x1_4000_0000)]
    e820 = [(e.addr, e.addr + e.size - 1, e.type) for e in m.e820()]
    assert e820 == [
        (0, 0x9FBFF, E820_RAM),
        (0x9FC00, 0x9FFFF, E820_RESERVED),
        (0xF0000, 0xFFFFF, E820_RESERVED),
        (0x100000, 0xBFFFFFFF, E820_RAM),  # the seed's /proc/iomem: 00100000-bfffffff
        (0x100000000, 0x13FFFFFFF, E820_RAM),  # and 100000000-13fffffff
    ]


def test_exactly_3g_has_no_high_region() -> None:
    assert len(MemoryMap(3 * GiB).ram) == 1


@pytest.mark.parametrize("size", [0, 1 * MiB, 10 << 40, 4 * MiB + 1])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(ConfigError):
        MemoryMap(size)


def test_guest_memory_bounds() -> None:
    mem = GuestMemory(MemoryMap(8 * MiB))
    mem.write(0x1000, b"abc")
    assert mem.read(0x1000, 3) == b"abc"
    mem.write_int(8 * MiB - 4, 4, 0xDEADBEEF)
    assert mem.read_int(8 * MiB - 4, 4) == 0xDEADBEEF
    for gpa, size in [(8 * MiB - 2, 4), (8 * MiB, 1), (-1, 1), (0xC000_0000, 4), (2**64 - 1, 2)]:
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, size)
        assert not mem.contains(gpa, size)


def test_guest_memory_high_region_and_hole() -> None:
    mem = GuestMemory(MemoryMap(4 * GiB))  # lazily mapped: costs nothing until touched
    mem.write(0x1_0000_0000, b"\x01\x02")
    assert mem.read(0x1_0000_0000, 2) == b"\x01\x02"
    with pytest.raises(GuestMemoryError):
        mem.write(0xBFFF_FFFF, b"\x00\x00")  # crosses into the PCI hole
    with pytest.raises(GuestMemoryError):
        mem.read(0xD000_0000, 4)
