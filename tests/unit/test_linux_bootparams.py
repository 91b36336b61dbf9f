"""Zero page, PVH start_info and the entry-state contracts against the boot protocol."""

from __future__ import annotations

import struct

import pytest

from broiler.boot.linux import layout
from broiler.boot.linux.bootparams import build_zero_page, encode_cmdline, synthetic_setup_header
from broiler.boot.linux.bzimage import CAN_USE_HEAP, KEEP_SEGMENTS, parse_bzimage
from broiler.boot.linux.entry import build_gdt, build_identity_page_tables, long_mode_entry_state, pvh_entry_state
from broiler.boot.linux.pvh import HVM_START_MAGIC, build_start_info
from broiler.core.memory import E820_RAM, E820_RESERVED, E820Entry, MemoryMap
from broiler.errors import ConfigError
from broiler.x86 import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from tests.unit.test_linux_bzimage import compress, make_bzimage, make_elf

GiB = 1 << 30


def u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def seed_e820() -> list[E820Entry]:
    return MemoryMap(4 * GiB).e820()


def test_seed_e820_for_4g() -> None:
    assert [(e.addr, e.addr + e.size, e.type) for e in seed_e820()] == [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0xA0000, E820_RESERVED),
        (0xF0000, 0x100000, E820_RESERVED),
        (0x100000, 0xC0000000, E820_RAM),
        (0x100000000, 0x140000000, E820_RAM),
    ]


def test_zero_page_fields() -> None:
    bz = parse_bzimage(make_bzimage(compress("none", make_elf())))
    zp = build_zero_page(
        setup_header=bz.setup_header,
        cmdline_addr=0x20000,
        e820=seed_e820(),
        initrd_addr=0x7F000000,
        initrd_size=0x200000,
        rsdp_addr=0xF1000,
    )
    assert len(zp) == 4096
    hdr = bz.setup_header
    assert zp[0x1F1:0x1FA] == hdr[:9] and zp[0x1FC:0x210] == hdr[11 : 0x210 - 0x1F1]  # copied as is ...
    assert u(zp, 0x1FA, 2) == 0xFFFF  # ... but vid_mode "normal",
    assert zp[0x202:0x206] == b"HdrS" and u(zp, 0x1FE, 2) == 0xAA55
    assert zp[0x210] == 0xFF  # ... but type_of_loader
    assert zp[0x211] & CAN_USE_HEAP and zp[0x211] & 0x01 and not zp[0x211] & KEEP_SEGMENTS
    assert u(zp, 0x224, 2) == 0xFE00  # heap_end_ptr
    assert u(zp, 0x228, 4) == 0x20000 and u(zp, 0xC8, 4) == 0  # cmd_line_ptr, ext_
    assert u(zp, 0x218, 4) == 0x7F000000 and u(zp, 0x21C, 4) == 0x200000
    assert u(zp, 0xC0, 4) == 0 and u(zp, 0xC4, 4) == 0
    assert u(zp, 0x070, 8) == 0xF1000  # acpi_rsdp_addr
    assert zp[0x1EF] == 0  # sentinel
    assert u(zp, 0x236, 2) == 0x7F and u(zp, 0x238, 4) == 2047  # xloadflags, cmdline_size kept
    assert zp[0x1E8] == 5
    table = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(5)]
    assert table == [(e.addr, e.size, e.type) for e in seed_e820()]
    assert zp[0x2D0 + 100 : 0x2D0 + 2560] == bytes(2560 - 100)


def test_zero_page_high_addresses_use_ext_fields() -> None:
    zp = build_zero_page(
        setup_header=synthetic_setup_header(),
        cmdline_addr=0x1_2345_6000,
        e820=[],
        initrd_addr=0x1_0000_0000,
        initrd_size=0x1_0000_1000,
    )
    assert u(zp, 0x228, 4) == 0x2345_6000 and u(zp, 0xC8, 4) == 1
    assert u(zp, 0x218, 4) == 0 and u(zp, 0xC0, 4) == 1
    assert u(zp, 0x21C, 4) == 0x1000 and u(zp, 0xC4, 4) == 1


def test_zero_page_keep_segments_and_too_many_entries() -> None:
    zp = build_zero_page(setup_header=synthetic_setup_header(), cmdline_addr=0, e820=[], keep_segments=True)
    assert zp[0x211] & KEEP_SEGMENTS
    with pytest.raises(ConfigError, match="e820"):
        build_zero_page(
            setup_header=synthetic_setup_header(),
            cmdline_addr=0,
            e820=[E820Entry(i << 20, 1 << 20, 1) for i in range(129)],
        )


def test_synthetic_header() -> None:
    h = synthetic_setup_header()
    zp = build_zero_page(setup_header=h, cmdline_addr=0x20000, e820=[])
    assert zp[0x202:0x206] == b"HdrS" and u(zp, 0x206, 2) == 0x020F
    assert 0x202 + zp[0x201] == 0x26C  # the header's own length
    assert u(zp, 0x236, 2) & 1 and u(zp, 0x238, 4) == 2047


def test_cmdline_encoding() -> None:
    assert encode_cmdline("console=ttyS0", 2047) == b"console=ttyS0\0"
    with pytest.raises(ConfigError, match="accepts 10"):
        encode_cmdline("x" * 11, 10)


def test_pvh_start_info() -> None:
    e820 = seed_e820()
    writes = dict(build_start_info(cmdline_addr=0x20000, e820=e820, initrd=(0x7F000000, 0x1234), rsdp_addr=0xF1000))
    info = writes[layout.PVH_START_INFO_ADDR]
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack("<IIIIQQQQII", info)
    assert (magic, version, flags, nr_modules) == (HVM_START_MAGIC, 1, 0, 1)
    assert (modlist, cmdline, rsdp, memmap, entries) == (
        layout.PVH_MODLIST_ADDR,
        0x20000,
        0xF1000,
        layout.PVH_MEMMAP_ADDR,
        len(e820),
    )
    assert len(info) == 56
    assert struct.unpack("<QQQQ", writes[layout.PVH_MODLIST_ADDR]) == (0x7F000000, 0x1234, 0, 0)
    mm = writes[layout.PVH_MEMMAP_ADDR]
    assert [struct.unpack_from("<QQII", mm, 24 * i)[:3] for i in range(len(e820))] == [
        (e.addr, e.size, e.type) for e in e820
    ]


def test_pvh_without_initrd() -> None:
    writes = dict(build_start_info(cmdline_addr=0x20000, e820=seed_e820()))
    info = writes[layout.PVH_START_INFO_ADDR]
    assert u(info, 12, 4) == 0 and u(info, 16, 8) == 0
    assert layout.PVH_MODLIST_ADDR not in writes


def _descriptor(gdt: bytes, selector: int) -> tuple[int, int, int, int]:
    d = u(gdt, selector, 8)
    base = ((d >> 16) & 0xFFFFFF) | ((d >> 56) << 24)
    limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
    return base, limit, (d >> 40) & 0xFF, (d >> 52) & 0xF


def test_gdt_descriptors() -> None:
    g64 = build_gdt(True)
    assert _descriptor(g64, 0x10) == (0, 0xFFFFF, 0x9B, 0xA)  # present, code exec/read, G|L
    assert _descriptor(g64, 0x18) == (0, 0xFFFFF, 0x93, 0xC)  # present, data r/w, G|D
    assert _descriptor(g64, 0x20)[1:3] == (0x67, 0x8B)  # busy TSS
    assert _descriptor(build_gdt(False), 0x10) == (0, 0xFFFFF, 0x9B, 0xC)
    assert u(g64, 0, 16) == 0


def test_identity_page_tables_map_4g() -> None:
    tables = dict(build_identity_page_tables())
    pml4, pdpt, pds = tables[layout.PML4_ADDR], tables[layout.PDPT_ADDR], tables[layout.PD_ADDR]
    assert u(pml4, 0, 8) == layout.PDPT_ADDR | 3 and pml4[8:] == bytes(4088)
    assert [u(pdpt, 8 * i, 8) for i in range(4)] == [(layout.PD_ADDR + 4096 * i) | 3 for i in range(4)]
    assert len(pds) == 4 * 4096 and layout.PD_ADDR + len(pds) == layout.PAGE_TABLES_END

    def translate(va: int) -> int:
        pde = u(pds, 8 * (va >> 21), 8)
        assert pde & 0x83 == 0x83
        return (pde & ~0x1FFFFF & ~0xFFF) | (va & 0x1FFFFF)

    for va in (0, 0x7000, 0x1000850, 0xBFFFFFFF, 0xFEE00000, 0xFFFFFFFF):
        assert translate(va) == va


def test_long_mode_entry_state() -> None:
    s = long_mode_entry_state(0x1000200, layout.ZERO_PAGE_ADDR)
    assert s.mode == "long64" and s.rip == 0x1000200
    assert s.regs["rsi"] == layout.ZERO_PAGE_ADDR and s.regs["rflags"] == 2
    assert s.cr0 & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG and s.cr4 & CR4_PAE and s.cr3 == layout.PML4_ADDR
    assert s.efer == EFER_LME | EFER_LMA
    assert (s.cs.selector, s.cs.l, s.cs.db, s.cs.type) == (0x10, 1, 0, 0xB)
    assert (s.data.selector, s.data.db, s.data.type) == (0x18, 1, 0x3)
    assert s.gdt == (layout.GDT_ADDR, 0x27)
    addrs = {gpa for gpa, _ in s.memory}
    assert {layout.GDT_ADDR, layout.PML4_ADDR, layout.PDPT_ADDR, layout.PD_ADDR} <= addrs


def test_pvh_entry_state() -> None:
    s = pvh_entry_state(0x1000850, layout.PVH_START_INFO_ADDR)
    assert s.mode == "pvh32" and s.regs["rbx"] == layout.PVH_START_INFO_ADDR
    assert s.cr0 & CR0_PE and not s.cr0 & CR0_PG and s.cr4 == 0 and s.efer == 0
    assert (s.cs.db, s.cs.l, s.cs.limit, s.cs.g) == (1, 0, 0xFFFFFFFF, 1)
    assert (s.tr.type, s.tr.s, s.tr.limit) == (0xB, 0, 0x67)
