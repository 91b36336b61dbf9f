"""broiler.boot.elf, the one ELF reader: both classes, and every bound of a damaged file."""

from __future__ import annotations

import struct

import pytest

from broiler.boot import elf as E
from broiler.boot.linux.elf import parse_elf as parse_vmlinux
from broiler.errors import ConfigError


def build(
    bits: int,
    segments: list[tuple[int, int, int, bytes, int, int]],
    *,
    entry: int = 0x100000,
    machine: int = E.EM_386,
) -> bytes:
    """An ELF file; segments: (p_type, vaddr, paddr, data, memsz, flags), data laid out after the headers."""
    ehsize, phsize = (52, 32) if bits == 32 else (64, 56)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    word = "I" if bits == 32 else "Q"
    header = ident + struct.pack(
        f"<HHI{word}{word}{word}IHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, len(segments), 0, 0, 0
    )
    offset = ehsize + phsize * len(segments)
    phdrs, blobs = b"", b""
    for p_type, vaddr, paddr, data, memsz, flags in segments:
        if bits == 32:
            phdrs += struct.pack("<IIIIIIII", p_type, offset, vaddr, paddr, len(data), memsz, flags, 4)
        else:
            phdrs += struct.pack("<IIQQQQQQ", p_type, flags, offset, vaddr, paddr, len(data), memsz, 4)
        blobs += data
        offset += len(data)
    return header + phdrs + blobs


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


CODE = (E.PT_LOAD, 0xC0100000, 0x100000, b"\x90" * 16, 0x40, E.PF_X)


@pytest.mark.parametrize("bits", [32, 64])
def test_both_classes_give_the_same_segments_and_entry(bits: int) -> None:
    image = build(bits, [CODE, (E.PT_LOAD, 0, 0x200000, b"", 0, 0)], entry=0xC0100004)
    f = E.parse_elf(image)
    assert (f.bits, f.machine, f.entry) == (bits, E.EM_386, 0xC0100004)
    assert len(f.segments) == 1  # an empty PT_LOAD loads nothing
    s = f.segments[0]
    assert (s.index, s.vaddr, s.paddr, s.filesz, s.memsz, s.flags) == (0, 0xC0100000, 0x100000, 16, 0x40, E.PF_X)
    assert f.segment_bytes(s) == b"\x90" * 16
    assert f.physical_entry() == 0x100004 and (f.load_start, f.load_end) == (0x100000, 0x100040)


def test_notes_are_read_and_trailing_padding_is_allowed() -> None:
    notes = note(b"Xen\0", 18, struct.pack("<Q", 0x1000850)) + note(b"GNU\0", 3, b"abcd") + bytes(8)
    f = E.parse_elf(build(64, [CODE, (E.PT_NOTE, 0, 0, notes, len(notes), 0)], machine=E.EM_X86_64))
    assert [(n.name, n.type) for n in f.notes] == [("Xen", 18), ("GNU", 3)]
    assert f.notes[1].desc == b"abcd"


@pytest.mark.parametrize(
    "image, message",
    [
        (b"MZ" + bytes(100), "not an ELF file"),
        (b"\x7fELF\x03\x01" + bytes(100), "unknown ELF class 3"),
        (b"\x7fELF\x01\x02" + bytes(100), "not a little-endian"),
        (build(32, [CODE])[:40], "truncated ELF header: the file has 40 bytes, an ELF32 header needs 52"),
        (build(64, [CODE])[:60], "truncated ELF header: the file has 60 bytes, an ELF64 header needs 64"),
        (build(32, [CODE])[:70], r"truncated file \(program headers past its end"),
        (build(64, [CODE])[:-1], r"truncated file \(segment 0 needs bytes up to"),
        (build(32, [(E.PT_LOAD, 0, 0x100000, bytes(8), 4, 0)]), "FileSiz 0x8 > MemSiz 0x4"),
        (build(32, [(E.PT_LOAD, 0, 0xFFFFF000, b"", 0x2000, 0)]), "wraps around the 32-bit address space"),
        (build(64, [(E.PT_LOAD, 0, 1 << 63, b"", (1 << 63) + 0x1000, 0)]), "wraps around the 64-bit address space"),
        (build(64, [CODE, (E.PT_NOTE, 0, 0, struct.pack("<III", 4, 64, 18) + b"Xen\0", 0, 0)]), "runs past the end"),
    ],
)
def test_damaged_files_are_one_clear_config_error(image: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        E.parse_elf(image, "k.elf")
    assert str(err.value).startswith("k.elf: ") and "\n" not in str(err.value)


def test_huge_offsets_do_not_wrap_into_the_file() -> None:
    image = bytearray(build(64, [CODE]))
    struct.pack_into("<Q", image, 32, (1 << 64) - 8)  # e_phoff near 2**64
    with pytest.raises(ConfigError, match="program headers past its end"):
        E.parse_elf(bytes(image))
    image = bytearray(build(64, [CODE]))
    struct.pack_into("<Q", image, 64 + 8, (1 << 64) - 4)  # p_offset near 2**64
    with pytest.raises(ConfigError, match="segment 0 needs bytes up to"):
        E.parse_elf(bytes(image))


def test_multiboot_can_skip_notes_it_never_reads() -> None:
    bad_note = (E.PT_NOTE, 0, 0, struct.pack("<III", 4, 64, 18) + b"Xen\0", 0, 0)
    assert E.parse_elf(build(32, [CODE, bad_note]), notes=False).notes == ()


def test_linux_calls_a_truncated_elf32_truncated_and_a_whole_one_32_bit() -> None:
    elf32 = build(32, [CODE])
    with pytest.raises(ConfigError, match="truncated ELF header"):
        parse_vmlinux(elf32[:40])
    with pytest.raises(ConfigError, match="truncated file"):
        parse_vmlinux(elf32[:-1])
    with pytest.raises(ConfigError, match="not a 64-bit ELF file"):
        parse_vmlinux(elf32)
    with pytest.raises(ConfigError, match="no PT_LOAD"):
        parse_vmlinux(build(64, [], machine=E.EM_X86_64))
