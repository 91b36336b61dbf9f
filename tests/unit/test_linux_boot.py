"""prepare_linux_boot end to end into GuestMemory, and the layout it relies on (no KVM)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from broiler.boot.firmware import PciIrq, sums_to_zero
from broiler.boot.linux import layout
from broiler.boot.linux.boot import prepare_linux_boot
from broiler.boot.linux.bzimage import load_bzimage
from broiler.boot.linux.pvh import HVM_START_MAGIC
from broiler.core.memory import GuestMemory, MemoryMap
from broiler.errors import ConfigError
from tests.unit.test_linux_bzimage import PVH_ENTRY, compress, make_bzimage, make_elf

MiB, GiB = 1 << 20, 1 << 30


def mem(size: int = 256 * MiB) -> GuestMemory:
    return GuestMemory(MemoryMap(size))


def u(m: GuestMemory, gpa: int, size: int) -> int:
    return m.read_int(gpa, size)


def test_low_layout_is_consistent() -> None:
    layout.check_low_layout()
    assert layout.ACPI_ADDR % 64 == 0 and layout.MPTABLE_ADDR % 16 == 0
    assert layout.PVH_MEMMAP_MAX >= 128


def test_place_initrd_top_of_low_ram() -> None:
    mm = MemoryMap(4 * GiB)
    assert layout.place_initrd(0x1234, kernel_end=0x4000000, memory_map=mm) == 0x80000000 - 0x2000
    small = MemoryMap(64 * MiB)
    assert layout.place_initrd(4096, kernel_end=0x2000000, memory_map=small) == 64 * MiB - 4096
    with pytest.raises(ConfigError, match="do not fit"):
        layout.place_initrd(8 * MiB, kernel_end=60 * MiB, memory_map=small)


def test_bzimage_auto_boots_pvh() -> None:
    m = mem()
    bz = make_bzimage(compress("gzip", make_elf()))
    initrd = b"INITRD" * 1000
    boot = prepare_linux_boot(m, bz, cmdline="console=ttyS0", ncpus=2, initrd=initrd, pci_irqs=[PciIrq(1, 1, 16)])
    assert boot.method == "pvh" and "vmlinux extracted" in boot.description
    e = boot.entry
    assert e.rip == PVH_ENTRY and e.regs["rbx"] == layout.PVH_START_INFO_ADDR
    assert m.read(0x1000000, 64) == b"\x90" * 64  # PT_LOAD copied
    assert u(m, layout.PVH_START_INFO_ADDR, 4) == HVM_START_MAGIC
    assert u(m, layout.PVH_START_INFO_ADDR + 24, 8) == layout.CMDLINE_ADDR
    assert u(m, layout.PVH_START_INFO_ADDR + 32, 8) == layout.ACPI_ADDR  # rsdp_paddr
    assert m.read(layout.CMDLINE_ADDR, 14) == b"console=ttyS0\0"
    addr, size = boot.initrd_range or (0, 0)
    assert size == len(initrd) and m.read(addr, size) == initrd
    assert addr % 4096 == 0 and addr + size <= 256 * MiB and addr >= boot.kernel_range[1]
    assert u(m, layout.PVH_MODLIST_ADDR, 8) == addr
    assert m.read(layout.MPTABLE_ADDR, 4) == b"_MP_" and sums_to_zero(m.read(layout.MPTABLE_ADDR, 16))
    assert m.read(layout.ACPI_ADDR, 8) == b"RSD PTR "
    assert m.read(layout.GDT_ADDR + 0x10, 8) == struct.pack("<Q", 0x00CF9B000000FFFF)
    zp = layout.ZERO_PAGE_ADDR  # written for every method
    assert u(m, zp + 0x228, 4) == layout.CMDLINE_ADDR and u(m, zp + 0x218, 4) == addr


def test_vmlinux64_method_uses_zero_page_and_page_tables() -> None:
    m = mem()
    boot = prepare_linux_boot(m, make_bzimage(compress("xz", make_elf())), cmdline="quiet", method="vmlinux64")
    e = boot.entry
    assert e.mode == "long64" and e.rip == 0x1000000 and e.regs["rsi"] == layout.ZERO_PAGE_ADDR
    assert u(m, layout.PML4_ADDR, 8) == layout.PDPT_ADDR | 3
    zp = layout.ZERO_PAGE_ADDR
    assert m.read(zp + 0x202, 4) == b"HdrS" and m.read_int(zp + 0x210, 1) == 0xFF
    assert u(m, zp + 0x1E8, 1) == len(m.map.e820())
    assert boot.initrd_range is None and u(m, zp + 0x218, 4) == 0


def test_bzimage64_method_loads_protected_mode_part() -> None:
    m = mem()
    img = make_bzimage(compress("gzip", make_elf()))
    boot = prepare_linux_boot(m, img, cmdline="", method="bzimage64")
    assert boot.entry.rip == 0x1000000 + 0x200 and boot.kernel_range == (0x1000000, 0x1800000)
    assert m.read(0x1000000, 1) == b"\xe9"


def test_bare_vmlinux_without_pvh_note() -> None:
    m = mem()
    boot = prepare_linux_boot(m, make_elf(pvh=None), cmdline="x")
    assert boot.method == "vmlinux64" and boot.description.startswith("ELF vmlinux")
    assert m.read(layout.ZERO_PAGE_ADDR + 0x202, 4) == b"HdrS"  # synthetic header


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "pvh", "kernel": make_elf(pvh=None)}, "no PVH entry"),
        ({"method": "bzimage64", "kernel": make_elf()}, "needs a bzImage"),
        ({"method": "bogus"}, "unknown boot method"),
        ({"kernel": b"#!/bin/sh\necho not a kernel\n" * 40}, "not a Linux kernel"),
        ({"cmdline": "x" * 3000}, "command line is 3000 bytes"),
        ({"initrd": bytes(300 * MiB)}, "do not fit"),
    ],
)
def test_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kernel": make_bzimage(compress("gzip", make_elf())), "cmdline": "x"}
    args.update(kwargs)
    kernel = args.pop("kernel")
    assert isinstance(kernel, bytes)
    with pytest.raises(ConfigError, match=message):
        prepare_linux_boot(mem(), kernel, **args)  # type: ignore[arg-type]


def test_kernel_larger_than_ram() -> None:
    with pytest.raises(ConfigError, match="more memory"):
        prepare_linux_boot(mem(16 * MiB), make_bzimage(compress("gzip", make_elf())), cmdline="x")


CACHE = Path("~/.cache/broiler/linux").expanduser()
REAL = sorted(CACHE.glob("vmlinuz-*")) if CACHE.is_dir() else []


@pytest.mark.skipif(not REAL, reason="no Debian kernel in ~/.cache/broiler/linux (tools/fetch-debian-kernel)")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_debian_kernel_layout(path: Path) -> None:
    m = mem(4 * GiB)
    initrd = (CACHE / "initramfs.cpio").read_bytes() if (CACHE / "initramfs.cpio").exists() else b"x" * 4096
    boot = prepare_linux_boot(m, path.read_bytes(), cmdline="console=ttyS0", ncpus=2, initrd=initrd)
    bz = load_bzimage(path)
    assert boot.method == "pvh"
    assert boot.kernel_range == (0x1000000, 0x1000000 + bz.init_size)
    assert boot.initrd_range is not None and boot.initrd_range[0] + len(initrd) <= 0x80000000


def test_reported_instruction_bytes_of_an_emulation_failure() -> None:
    from broiler.emulate.kvm_cpu import reported_instruction

    # kvm_run.internal.data of a real -c 2 boot: flags 1, insn_size 15, the int3 text_poke_bp had put there
    data = [0x1, 0xFFF42DC7E890CC0F, 0x4801B41598050348, 0x1000]
    assert reported_instruction(data) == bytes.fromhex("cc90e8c72df4ff48030598 15b40148".replace(" ", ""))
    assert reported_instruction([0x0, 1, 2]) is None  # no instruction bytes flag
    assert reported_instruction([0x1]) is None


class _PatchedCode:
    """A stopped 64-bit vCPU at an int3 another vCPU may have rewritten (for kvm_cpu.fetched_code)."""

    def __init__(self, memory: bytes, reported: bytes, rip: int = 0x1000) -> None:
        self.memory = memory  # the page at 0x1000
        self.rip = rip
        words = (bytes([len(reported)]) + reported).ljust(16, b"\0")
        self.data = [0x1, int.from_bytes(words[:8], "little"), int.from_bytes(words[8:], "little")]

    def internal_error_data(self) -> list[int]:
        return self.data

    def bitness(self) -> int:
        return 64

    def get_reg(self, name: str) -> int:
        assert name == "rip"
        return self.rip

    def read_linear(self, addr: int, size: int) -> bytes:
        from broiler.emulate.state import GuestFault

        if not 0x1000 <= addr < 0x2000 or addr + size > 0x2000:
            raise GuestFault(addr, False)
        return self.memory[addr - 0x1000 : addr - 0x1000 + size]


def test_fetched_code_is_what_the_vcpu_fetched_even_when_rewritten_since() -> None:
    from broiler.emulate.kvm_cpu import fetched_code

    page = bytes.fromhex("cc90e8c72df4ff48030598") + bytes(0x1000 - 11)
    # Unchanged: the reported bytes, which the emulator decodes (not a second read of memory).
    stopped = _PatchedCode(page, page[:15])
    assert fetched_code(stopped, stopped) == (page[:15], False)  # type: ignore[arg-type]
    # text_poke_bp finished in between: memory holds the new nop, the int3 is still what was fetched.
    patched = _PatchedCode(b"\x66" + page[1:], page[:15])
    assert fetched_code(patched, patched) == (page[:15], True)  # type: ignore[arg-type]
    # KVM fetched 3 bytes: the rest of the instruction comes from memory after them.
    short = _PatchedCode(page, page[:3])
    assert fetched_code(short, short) == (page[:15], False)  # type: ignore[arg-type]
    # The last byte of a page with nothing mapped after it: only what was fetched.
    end = _PatchedCode(bytes(0xFFF) + b"\xcc", b"\xcc", rip=0x1FFF)
    assert fetched_code(end, end) == (b"\xcc", False)  # type: ignore[arg-type]
