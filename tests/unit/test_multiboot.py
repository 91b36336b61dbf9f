"""Multiboot v1 loader: images built here byte by byte, loaded into a real GuestMemory (no KVM)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from broiler.boot import multiboot as mb
from broiler.boot import multiboot_header as mbh
from broiler.core.memory import E820_RAM, E820_RESERVED, E820Entry, GuestMemory, MapRange, MemoryMap, MiB
from broiler.errors import ConfigError

RAM = 16 * MiB
KERNEL = 0x100000


def header(flags: int = 0, kludge: tuple[int, int, int, int, int] | None = None) -> bytes:
    if kludge is not None:
        flags |= mbh.FLAG_AOUT_KLUDGE
    h = struct.pack("<III", mbh.HEADER_MAGIC, flags, (-(mbh.HEADER_MAGIC + flags)) & 0xFFFFFFFF)
    return h + (struct.pack("<5I", *kludge) if kludge is not None else b"")


def elf(
    segments: list[tuple[int, bytes, int]],
    entry: int,
    *,
    elf64: bool = False,
    flags: int = 0,
    machine: int | None = None,
    vaddrs: list[int] | None = None,
) -> bytes:
    """An x86 ELF whose first segment starts with a Multiboot header. segments: (paddr, data, memsz)."""
    ehsize, phsize = (64, 56) if elf64 else (52, 32)
    segments = [(segments[0][0], header(flags) + segments[0][1], segments[0][2]), *segments[1:]]
    offset = ehsize + phsize * len(segments)
    phdrs, blobs = b"", b""
    for i, (paddr, data, memsz) in enumerate(segments):
        vaddr = vaddrs[i] if vaddrs else paddr
        if elf64:
            phdrs += struct.pack("<IIQQQQQQ", 1, 5, offset, vaddr, paddr, len(data), memsz, 16)
        else:
            phdrs += struct.pack("<IIIIIIII", 1, offset, vaddr, paddr, len(data), memsz, 5, 16)
        offset += len(data)
        blobs += data
    machine = machine if machine is not None else (62 if elf64 else 3)
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 1, 1]) + bytes(9)
    if elf64:
        eh = ident + struct.pack(
            "<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, len(segments), 0, 0, 0
        )
    else:
        eh = ident + struct.pack(
            "<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, len(segments), 0, 0, 0
        )
    return eh + phdrs + blobs


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory(MemoryMap(RAM))


def cstr(mem: GuestMemory, addr: int) -> str:
    data = mem.read(addr, 4096)
    return data[: data.index(0)].decode()


def info(mem: GuestMemory, image: mb.MultibootImage) -> dict[str, int]:
    raw = mem.read(image.info_addr, mb.INFO_SIZE)
    names = ["flags", "mem_lower", "mem_upper", "boot_device", "cmdline", "mods_count", "mods_addr"]
    fields = dict(zip(names, struct.unpack_from("<7I", raw), strict=True))
    fields["mmap_length"], fields["mmap_addr"] = struct.unpack_from("<II", raw, 44)
    fields["boot_loader_name"] = struct.unpack_from("<I", raw, 64)[0]
    return fields


# -- the header ----------------------------------------------------------------------------------
def test_find_header_scans_4_byte_aligned_first_8k() -> None:
    assert mbh.find_header(bytes(100)) is None
    assert mbh.find_header(bytes(8) + header(3)) == mbh.MultibootHeader(offset=8, flags=3)
    assert mbh.find_header(bytes(6) + header(3)) is None  # not 4-byte aligned
    assert mbh.find_header(bytes(8192) + header(3)) is None  # past the first 8 KiB
    assert mbh.find_header(bytes(8192 - 12) + header(3)) is not None  # the last slot that fits
    bad = bytearray(header(3))
    bad[8] ^= 1
    assert mbh.find_header(bytes(bad)) is None  # bad checksum
    assert mbh.is_multiboot(header(0)) and not mbh.is_multiboot(b"\x7fELF" + bytes(60))


def test_find_header_refuses_truncated_kludge_fields() -> None:
    with pytest.raises(ConfigError, match="truncated"):
        mbh.find_header(header(kludge=(0, 0, 0, 0, 0))[:20])
    assert mbh.is_multiboot(header(kludge=(0, 0, 0, 0, 0))[:20])


# -- ELF loading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("elf64", [False, True])
def test_elf_segments_bss_and_low_segment(mem: GuestMemory, elf64: bool) -> None:
    mem.fill(0, 2 * MiB, 0xCC)  # stale RAM: the loader must zero the bss itself
    text, low = b"\x90" * 100 + b"\xf4", b"LOWDATA!"
    image = elf([(KERNEL, text, 0x200), (0x7000, low, 0x1000)], KERNEL + 12, elf64=elf64)
    img = mb.load_multiboot(mem, image, kernel_name="k.elf", cmdline="a=1 b")
    assert img.format == ("elf64" if elf64 else "elf32")
    assert (img.entry, img.info_addr, img.eax) == (KERNEL + 12, 0x9500, 0x2BADB002)
    assert (img.kernel_start, img.kernel_end) == (0x7000, KERNEL + 0x200)
    assert mem.read(KERNEL, 12 + len(text)) == header() + text
    assert mem.read(KERNEL + 12 + len(text), 0x200 - 12 - len(text)) == bytes(0x200 - 12 - len(text))
    assert mem.read(0x7000, 8) == low and mem.read(0x7008, 0x1000 - 8) == bytes(0x1000 - 8)
    assert mem.read(0x8000, 1) == b"\xcc"  # nothing written past the segment
    assert [p.what for p in img.placements][:2] == ["kernel", "kernel"]


def test_elf_entry_is_moved_from_virtual_to_physical(mem: GuestMemory) -> None:
    image = elf([(KERNEL, bytes(64), 128)], 0xFFFF_FFFF_8000_0010, elf64=True, vaddrs=[0xFFFF_FFFF_8000_0000])
    assert mb.load_multiboot(mem, image, kernel_name="k").entry == KERNEL + 0x10


def test_info_block_matches_qemu_layout(mem: GuestMemory) -> None:
    img = mb.load_multiboot(
        mem, elf([(KERNEL, bytes(32), 0x3000)], KERNEL), kernel_name="/x/k.elf", cmdline="console=ttyS0"
    )
    f = info(mem, img)
    assert f["flags"] == 0x24F == mb.INFO_FLAGS
    assert (f["mem_lower"], f["mem_upper"]) == (639, RAM // 1024 - 1024) == (img.mem_lower, img.mem_upper)
    assert f["boot_device"] == 0x8000FFFF
    assert cstr(mem, f["cmdline"]) == "/x/k.elf console=ttyS0" == img.cmdline
    assert cstr(mem, f["boot_loader_name"]) == "broiler"
    assert (f["mods_count"], f["mods_addr"]) == (0, KERNEL + 0x3000)  # first page after the kernel
    entries = MemoryMap(RAM).e820()
    assert (f["mmap_addr"], f["mmap_length"]) == (0x9000, 24 * len(entries))
    raw = mem.read(0x9000, f["mmap_length"])
    got = [struct.unpack_from("<IQQI", raw, 24 * i) for i in range(len(entries))]
    assert got == [(20, e.addr, e.size, e.type) for e in entries]


def test_empty_cmdline_is_kernel_name_and_space_like_qemu(mem: GuestMemory) -> None:
    img = mb.load_multiboot(mem, elf([(KERNEL, bytes(32), 64)], KERNEL), kernel_name="k")
    assert cstr(mem, info(mem, img)["cmdline"]) == "k "


def test_modules_are_page_aligned_after_the_kernel_with_their_strings(mem: GuestMemory) -> None:
    mods = [("env.txt", b"A=1\nB=2\n"), ("second arg", b"x" * 5000)]
    img = mb.load_multiboot(mem, elf([(KERNEL, bytes(32), 0x1800)], KERNEL), kernel_name="k", cmdline="c", modules=mods)
    f = info(mem, img)
    assert f["mods_count"] == 2 and f["mods_addr"] == KERNEL + 0x2000
    table = [struct.unpack_from("<IIII", mem.read(f["mods_addr"] + 16 * i, 16)) for i in range(2)]
    for (name, blob), (start, end, string, reserved), m in zip(mods, table, img.modules, strict=True):
        assert start % 4096 == 0 and start >= KERNEL + 0x3000 and reserved == 0
        assert mem.read(start, end - start) == blob
        assert cstr(mem, string) == name
        assert (m.start, m.end, m.string_addr, m.name) == (start, end, string, name)
    assert table[1][0] == table[0][0] + 4096
    # QEMU's order: module list, module strings, kernel command line, loader name.
    assert table[0][2] == f["mods_addr"] + 32 < table[1][2] < f["cmdline"] < f["boot_loader_name"]


def test_loader_data_skips_reserved_areas(mem: GuestMemory) -> None:
    # A tiny kernel at 0x1000: the 40 KiB module would cross the boot page at 0x9000.
    img = mb.load_multiboot(
        mem,
        elf([(0x1000, bytes(32), 0x1000)], 0x1000),
        kernel_name="k",
        modules=[("m", b"m" * 40960)],
        reserved=[MapRange(0xA000, 0xC000, "MP table")],
    )
    (m,) = img.modules
    assert m.start == 0xC000 and mem.read(m.start, 4) == b"mmmm"


def test_a_kernel_below_1mib_on_the_boot_page_moves_the_boot_information(mem: GuestMemory) -> None:
    # Issue 17: a segment at 0x8000-0xA86C covers 0x9000; the memory map and info block go past it.
    kernel = elf([(0x8000, b"\xab" * 0x100, 0x286C)], 0x8000)
    img = mb.load_multiboot(mem, kernel, kernel_name="low", cmdline="x=1", modules=[("m", b"mod")])
    assert img.kernel_start == 0x8000 and img.kernel_end == 0xA86C
    assert mem.read(0x8000 + 12, 4) == b"\xab" * 4 and mem.read(0x9000, 16) == bytes(16)  # bss stays zero
    f = info(mem, img)
    assert img.info_addr == 0xB500 and f["mmap_addr"] == 0xB000
    taken = sorted((p.start, p.end) for p in img.placements)
    assert all(a1 <= b0 for (_, a1), (b0, _) in zip(taken, taken[1:], strict=False))  # nothing overlaps
    assert all(p.start >= 0xA86C for p in img.placements if p.what != "kernel")
    assert cstr(mem, f["cmdline"]) == "low x=1"


def test_the_boot_page_stays_at_0x9000_when_the_kernel_leaves_it_free(mem: GuestMemory) -> None:
    img = mb.load_multiboot(mem, elf([(0x1000, bytes(32), 0x1000)], 0x1000), kernel_name="k")
    assert img.info_addr == mb.INFO_ADDR and info(mem, img)["mmap_addr"] == mb.MMAP_ADDR


# -- the a.out kludge ----------------------------------------------------------------------------
def test_aout_kludge_loads_the_whole_file_and_zeroes_bss(mem: GuestMemory) -> None:
    mem.fill(KERNEL, 0x10000, 0xCC)
    body = header(kludge=(KERNEL + 0x10, KERNEL, 0, KERNEL + 0x4000, KERNEL + 0x40))
    image = bytes(range(16)) + body + b"payload"
    img = mb.load_multiboot(mem, image, kernel_name="k.bin")
    assert (img.format, img.entry, img.kernel_end) == ("a.out kludge", KERNEL + 0x40, KERNEL + 0x4000)
    assert mem.read(KERNEL, len(image)) == image
    assert mem.read(KERNEL + len(image), 0x4000 - len(image)) == bytes(0x4000 - len(image))


def test_aout_kludge_load_end_addr_limits_the_copy_and_wins_over_elf(mem: GuestMemory) -> None:
    # header at file offset 0x40, describing a load of file bytes [0x20, 0x80) at 0x200000.
    load = 0x200000
    image = bytearray(0x100)
    image[:4] = b"\x7fELF"  # an ELF header is ignored when bit 16 is set
    image[0x40:0x60] = header(kludge=(load + 0x20, load, load + 0x60, 0, load + 0x30))
    image[0x80:] = b"\xee" * 0x80
    mem.fill(load, 0x100, 0xCC)
    img = mb.load_multiboot(mem, bytes(image), kernel_name="k")
    assert mem.read(load, 0x60) == bytes(image[0x20:0x80]) and mem.read(load + 0x60, 1) == b"\xcc"
    assert (img.kernel_start, img.kernel_end, img.entry) == (load, load + 0x60, load + 0x30)


# -- mem_lower / mem_upper -------------------------------------------------------------------------
def test_mem_upper_follows_contiguous_ram_from_1mib_in_an_unsorted_map() -> None:
    e820 = [
        E820Entry(0x300000, 0x100000, E820_RAM),
        E820Entry(0, 0x9F000, E820_RAM),
        E820Entry(0x100000, 0x200000, E820_RAM),
        E820Entry(0x400000, 0x1000, E820_RESERVED),
        E820Entry(0x401000, 0x100000, E820_RAM),
    ]
    fake = SimpleNamespace(map=SimpleNamespace(e820=lambda: e820))
    assert mb._mem_lower_upper(fake) == (0x9F000 // 1024, 3 * 1024)  # type: ignore[arg-type]


def test_default_ram_for_test_kernels() -> None:
    assert mb.DEFAULT_RAM // MiB == 128


# -- bad input: one clear line, nothing written ------------------------------------------------------
K = [(KERNEL, bytes(32), 64)]


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (b"\x7fELF" + bytes(200), {}, "no Multiboot header"),
        (elf(K, KERNEL, flags=mbh.FLAG_VIDEO_MODE), {}, "video mode"),
        (elf(K, KERNEL, flags=1 << 3 | 1 << 15), {}, r"unsupported features \(flag bits 3, 15\)"),
        (elf([(RAM - 16, bytes(32), 64)], RAM - 16), {}, "outside guest RAM"),
        (elf([(0xF0000, bytes(32), 64)], 0xF0000), {}, "overlaps the EBDA, VGA and BIOS area"),
        (elf(K, KERNEL), {"reserved": [MapRange(KERNEL + 32, KERNEL + 48, "ACPI tables")]}, "overlaps the ACPI"),
        (elf([(KERNEL, bytes(32), 0x100), (KERNEL + 0x80, b"x", 1)], KERNEL), {}, "segments .* overlap"),
        (elf(K, KERNEL)[:28] + struct.pack("<I", 0x1000) + elf(K, KERNEL)[32:], {}, "truncated file .program headers"),
        (elf(K, KERNEL)[:-1], {}, r"truncated file \(segment 0"),
        (elf([(KERNEL, bytes(32), 8)], KERNEL), {}, "FileSiz 0x2c > MemSiz 0x8"),
        (header(0) + bytes(64), {}, "neither ELF nor marked with the a.out kludge"),
        (elf(K, KERNEL, machine=40), {}, "machine 40 is not x86"),
        (elf(K, KERNEL)[:5] + b"\x02" + elf(K, KERNEL)[6:], {}, "little-endian"),
        ((b"\x7fELF\x02\x01\x01\x00" + header(0)).ljust(60, b"\0"), {}, "truncated ELF header"),
        (elf(K, KERNEL + 0x1000), {}, "entry point 0x101000 is outside"),
        (header(kludge=(KERNEL, KERNEL + 4, 0, 0, KERNEL)), {}, "header_addr 0x100000 is below load_addr"),
        (header(kludge=(KERNEL + 8, KERNEL, 0, 0, KERNEL)), {}, "load_addr lies before the start of the file"),
        (header(kludge=(KERNEL, KERNEL, KERNEL - 1, 0, KERNEL)), {}, "load_end_addr 0xfffff is below"),
        (header(kludge=(KERNEL, KERNEL, KERNEL + 64, 0, KERNEL)), {}, "a.out kludge: truncated file"),
        (header(kludge=(KERNEL, KERNEL, 0, KERNEL + 8, KERNEL)), {}, "bss_end_addr 0x100008 is below"),
        (elf(K, KERNEL), {"modules": [("big.img", bytes(RAM))]}, "module big.img .* does not fit"),
        (elf(K, KERNEL), {"cmdline": "a\0b"}, "command line contains a NUL"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    mem: GuestMemory, image: bytes, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        mb.load_multiboot(mem, image, kernel_name="k", **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert mem.read(0x9000, 0x1000) == bytes(0x1000) and mem.read(KERNEL, 0x1000) == bytes(0x1000)


def test_elf_without_loadable_segments() -> None:
    image = bytearray(elf(K, KERNEL))
    struct.pack_into("<I", image, 52, 4)  # PT_NOTE instead of PT_LOAD
    with pytest.raises(ConfigError, match="no PT_LOAD"):
        mb.load_multiboot(GuestMemory(MemoryMap(RAM)), bytes(image), kernel_name="k")


# -- files ---------------------------------------------------------------------------------------
def test_load_from_files_names_modules_by_path(tmp_path, mem: GuestMemory) -> None:
    kernel, env = tmp_path / "k.elf", tmp_path / "env"
    kernel.write_bytes(elf(K, KERNEL))
    env.write_bytes(b"KEY=VAL\n")
    img = mb.load_multiboot_files(mem, kernel, cmdline="x", initrds=[env])
    assert img.cmdline == f"{kernel} x"
    assert img.modules[0].name == str(env) and mem.read(img.modules[0].start, 8) == b"KEY=VAL\n"
    with pytest.raises(ConfigError, match="initrd .* does not exist"):
        mb.load_multiboot_files(mem, kernel, initrds=[tmp_path / "missing"])
    with pytest.raises(ConfigError, match="kernel .* does not exist"):
        mb.load_multiboot_files(mem, tmp_path / "missing")


def test_entry_state_is_the_multiboot_machine_state(mem: GuestMemory) -> None:
    from broiler.x86 import CR0_PE, CR0_PG

    img = mb.load_multiboot(mem, elf(K, KERNEL), kernel_name="k")
    s = img.entry_state
    assert (s.rip, s.regs["rax"], s.regs["rbx"], s.regs["rflags"]) == (KERNEL, 0x2BADB002, 0x9500, 0x2)
    assert s.cr0 & CR0_PE and not s.cr0 & CR0_PG and (s.cr3, s.cr4, s.efer) == (0, 0, 0)
    assert (s.cs.db, s.cs.l, s.cs.base, s.cs.limit, s.data.base, s.data.limit) == (1, 0, 0, 0xFFFFFFFF, 0, 0xFFFFFFFF)
    assert s.gdt is None and s.idt is None  # undefined for Multiboot: KVM's stay
