"""bzImage header parsing and payload extraction, on synthetic kernels (and the real Debian ones if a
previous tools/fetch-debian-kernel left them in the cache)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from pathlib import Path

import lz4.block as lz4_block
import pytest
import zstandard

from broiler.boot.linux import bzimage
from broiler.boot.linux.bzimage import detect_compression, extract_vmlinux, parse_bzimage
from broiler.boot.linux.elf import XEN_ELFNOTE_PHYS32_ENTRY, parse_elf, pvh_entry
from broiler.errors import ConfigError

PVH_ENTRY = 0x1000850


def make_elf(
    segments: list[tuple[int, bytes, int]] | None = None, entry: int = 0x1000000, pvh: int | None = PVH_ENTRY
) -> bytes:
    """An ELF64 x86-64 executable: PT_LOAD (paddr, data, memsz) segments and an optional PVH note."""
    if segments is None:
        segments = [(0x1000000, b"\x90" * 64 + b"KERNEL", 0x2000), (0x1200000, b"DATA", 0x100)]
    notes = b""
    if pvh is not None:
        notes += struct.pack("<III", 4, 8, 6) + b"Xen\0" + struct.pack("<Q", 0)  # another Xen note
        notes += struct.pack("<III", 4, 8, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<Q", pvh)
    phnum = len(segments) + (1 if notes else 0)
    phoff = 64
    data_off = phoff + 56 * phnum
    blobs = b""
    phdrs = b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack(
            "<IIQQQQQQ", 1, 5, data_off + len(blobs), 0xFFFFFFFF80000000 + paddr, paddr, len(data), memsz, 0x1000
        )
        blobs += data
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, data_off + len(blobs), 0, 0, len(notes), len(notes), 4)
        blobs += notes
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + blobs


def lz4_legacy(data: bytes) -> bytes:

    out = b"\x02\x21\x4c\x18"
    for i in range(0, len(data), 8 << 20):
        block = lz4_block.compress(data[i : i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


def compress(kind: str, data: bytes) -> bytes:
    size = struct.pack("<I", len(data))  # Linux's size_append
    if kind == "gzip":
        return gzip.compress(data)  # gzip's own trailer already ends with the size
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE) + size
    if kind == "bzip2":
        return bz2.compress(data) + size
    if kind == "lz4":
        return lz4_legacy(data) + size
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data) + size
    if kind == "none":
        return data
    raise AssertionError(kind)


def make_bzimage(
    payload: bytes,
    *,
    setup_sects: int = 4,
    protocol: int = 0x020F,
    xloadflags: int = 0x7F,
    init_size: int = 0x800000,
    pref_address: int = 0x1000000,
    magic: bytes = b"HdrS",
) -> bytes:
    setup = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    prot = b"\xe9" + bytes(0x3FF) + payload + b"\xcc" * 13  # a stub, the payload, a tail
    syssize = (len(prot) + 15) // 16
    prot = prot.ljust(syssize * 16, b"\0")
    struct.pack_into("<I", setup, 0x1F4, syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    struct.pack_into("<BB", setup, 0x200, 0xEB, 0x26C - 0x202)
    struct.pack_into("<4sH", setup, 0x202, magic, protocol)
    setup[0x211] = 0x01
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<IIBBHI", setup, 0x22C, 0x7FFFFFFF, 0x200000, 1, 21, xloadflags, 2047)
    struct.pack_into("<II", setup, 0x248, 0x400, len(payload))
    struct.pack_into("<QI", setup, 0x258, pref_address, init_size)
    return bytes(setup) + prot


def test_parse_fields() -> None:
    bz = parse_bzimage(make_bzimage(compress("gzip", make_elf()), setup_sects=27))
    assert bz.protocol == 0x020F and bz.protocol_text == "2.15"
    assert bz.setup_sects == 27 and bz.setup_size == 28 * 512
    assert bz.kernel_64 and bz.can_be_loaded_above_4g and bz.relocatable
    assert bz.kernel_alignment == 0x200000 and bz.min_alignment == 21
    assert bz.cmdline_size == 2047 and bz.initrd_addr_max == 0x7FFFFFFF
    assert bz.pref_address == 0x1000000 and bz.init_size == 0x800000
    assert bz.header_end == 0x26C and len(bz.setup_header) == 0x26C - 0x1F1
    assert bz.payload.startswith(b"\x1f\x8b")
    assert bz.protected_mode_kernel[0] == 0xE9


def test_setup_sects_zero_means_four() -> None:
    bz = parse_bzimage(make_bzimage(compress("none", make_elf()), setup_sects=0))
    assert bz.setup_sects == 4 and bz.setup_size == 5 * 512
    assert bz.protected_mode_kernel[0] == 0xE9


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "bzip2", "lz4", "zstd", "none"])
def test_extract_every_compression(kind: str) -> None:
    elf = make_elf()
    bz = parse_bzimage(make_bzimage(compress(kind, elf)))
    assert detect_compression(bz.payload) == kind
    assert extract_vmlinux(bz) == elf
    assert pvh_entry(parse_elf(extract_vmlinux(bz))) == PVH_ENTRY


def test_lz4_multiple_blocks() -> None:
    elf = make_elf([(0x1000000, bytes(range(256)) * (40 << 10), 0xA00000)])  # 10 MiB: two 8 MiB blocks
    bz = parse_bzimage(make_bzimage(compress("lz4", elf)))
    assert extract_vmlinux(bz) == elf


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"MZ" + bytes(1000), "not a Linux bzImage"),
        (b"short", "too short"),
    ],
)
def test_not_a_kernel(bad: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bzimage(bad)


def test_old_protocol_rejected() -> None:
    with pytest.raises(ConfigError, match="older than 2.06"):
        parse_bzimage(make_bzimage(b"x", protocol=0x0205))


def test_truncated_file() -> None:
    img = make_bzimage(compress("gzip", make_elf()))
    with pytest.raises(ConfigError, match="truncated"):
        parse_bzimage(img[: len(img) // 2])


def test_unknown_compression() -> None:
    bz = parse_bzimage(make_bzimage(b"\x12\x34\x56\x78" + bytes(60)))
    with pytest.raises(ConfigError, match="unknown kernel compression .*12 34 56 78"):
        extract_vmlinux(bz)


def test_lzo_is_refused_by_name() -> None:
    bz = parse_bzimage(make_bzimage(b"\x89LZO\0" + bytes(60)))
    with pytest.raises(ConfigError, match="LZO"):
        extract_vmlinux(bz)


@pytest.mark.parametrize("kind", ["gzip", "xz", "lz4", "zstd"])
def test_corrupt_payload(kind: str) -> None:
    good = compress(kind, make_elf([(0x1000000, bytes(range(256)) * 64, 0x8000)]))
    cut = good[: len(good) // 2] + b"\0" * 8  # truncated stream, wrong size trailer
    bz = parse_bzimage(make_bzimage(cut))
    with pytest.raises(ConfigError, match="corrupt|truncated|not an ELF"):
        extract_vmlinux(bz)


def test_payload_not_elf() -> None:
    bz = parse_bzimage(make_bzimage(compress("gzip", b"just text, no kernel" * 10)))
    with pytest.raises(ConfigError, match="not an ELF"):
        extract_vmlinux(bz)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read kernel"):
        bzimage.load_bzimage(tmp_path / "nope")


CACHE = Path("~/.cache/broiler/linux").expanduser()
REAL = sorted(CACHE.glob("vmlinuz-*")) if CACHE.is_dir() else []


@pytest.mark.skipif(not REAL, reason="no Debian kernel in ~/.cache/broiler/linux (tools/fetch-debian-kernel)")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_debian_kernel(path: Path) -> None:
    bz = bzimage.load_bzimage(path)
    assert bz.protocol >= 0x020F and bz.kernel_64 and bz.relocatable
    elf = parse_elf(extract_vmlinux(bz))
    assert elf.entry == bz.pref_address == 0x1000000
    assert pvh_entry(elf) is not None and elf.load_start == 0x1000000
