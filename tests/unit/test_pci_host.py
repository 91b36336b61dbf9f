"""The host: CF8/CFC and ECAM through the real buses, the slot registry, allocators, BAR decode."""

from __future__ import annotations

import pytest

from broiler.core.bus import Device, MmioBus, PioBus
from broiler.core.memory import PCI_ECAM_BASE
from broiler.errors import ConfigError, KvmError
from broiler.pci import BarKind, IoAllocator, MmioAllocator, PciFunction, PciHost
from tests.unit.fakes import FakeDoorbells
from tests.unit.pci_fakes import Rig, conf1_address


class Regs(Device):
    def __init__(self, name: str = "regs") -> None:
        super().__init__()
        self.name = name
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0xAB00 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def two_bar_fn(name: str = "dev", io: int = 0x100, mem: int = 0x1000) -> PciFunction:
    fn = PciFunction(vendor_id=0x1AF4, device_id=0x10F0 + len(name), name=name)
    fn.add_bar(0, BarKind.IO, io, Regs(f"{name}-io"))
    fn.add_bar(1, BarKind.MEM32, mem, Regs(f"{name}-mem"))
    return fn


# -- configuration mechanism #1 ----------------------------------------------------------------
def test_conf1_latch_readback_and_linux_probe() -> None:
    rig = Rig()
    rig.pio.write(0xCF8, 4, 0x8000_0000)
    assert rig.pio.read(0xCF8, 4) == 0x8000_0000
    rig.pio.write(0xCFB, 1, 0x01)  # Linux's type-2 probe byte: ignored
    assert rig.pio.read(0xCF8, 4) == 0x8000_0000
    assert rig.pio.read(0xCF8, 2) == 0xFFFF
    assert rig.host.conf1.guest_errors == 2


def test_conf1_reads_every_width() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    rig.pio.write(0xCF8, 4, conf1_address(1, 0))
    assert rig.pio.read(0xCFC, 4) == 0x10F3_1AF4
    assert [rig.pio.read(0xCFC + i, 1) for i in range(4)] == [0xF4, 0x1A, 0xF3, 0x10]
    assert rig.pio.read(0xCFE, 2) == 0x10F3
    assert rig.pio.read(0xCFD, 2) == 0xF31A  # a word inside the window is fine
    assert rig.pio.read(0xCFD, 4) == 0xFFFF_FFFF  # crosses 0xCFF: never reaches the host
    assert rig.pio.read(0xCFF, 2) == 0xFFFF


def test_conf1_enable_bit_and_absent_functions() -> None:
    rig = Rig()
    rig.host.add(two_bar_fn())
    rig.pio.write(0xCF8, 4, conf1_address(1, 0, enable=False))
    assert rig.pio.read(0xCFC, 4) == 0xFFFF_FFFF
    rig.pio.write(0xCFC, 4, 0)  # dropped
    for dev, fn, bus in ((2, 0, 0), (1, 1, 0), (1, 0, 1), (31, 0, 0)):
        assert rig.cfg_read(dev, 0, fn=fn, bus=bus) == 0xFFFF_FFFF
        assert rig.cfg_read(dev, 0, 2, fn=fn, bus=bus) == 0xFFFF
        rig.cfg_write(dev, 4, 2, 7, fn=fn, bus=bus)
    assert rig.cfg_read(1, 0) == 0x10F3_1AF4
    assert rig.host.conf1.guest_errors == 0


def test_conf1_write_reaches_the_right_register() -> None:
    rig = Rig()
    rig.host.add(two_bar_fn())
    rig.cfg_write(1, 0x3C, 1, 0x0B)
    rig.cfg_write(1, 0x0D, 1, 0x40)  # latency timer via port 0xCFD
    assert rig.cfg_read(1, 0x3C, 1) == 0x0B and rig.cfg_read(1, 0x0C) == 0x4000


# -- ECAM --------------------------------------------------------------------------------------
def test_ecam_reads_and_writes() -> None:
    rig = Rig()
    rig.host.add(two_bar_fn())
    assert rig.cfg_read(1, 0, ecam=True) == 0x10F3_1AF4
    assert rig.cfg_read(1, 2, 2, ecam=True) == 0x10F3
    assert rig.cfg_read(1, 3, 1, ecam=True) == 0x10
    rig.cfg_write(1, 0x3C, 1, 0x33, ecam=True)
    assert rig.cfg_read(1, 0x3C, 1) == 0x33
    assert rig.cfg_read(0, 0x100, ecam=True) == 0xFFFF_FFFF  # extended space: absent
    assert rig.cfg_read(1, 0, ecam=True, bus=15) == 0xFFFF_FFFF
    assert rig.cfg_read(1, 0, ecam=True, fn=7) == 0xFFFF_FFFF
    assert rig.host.ecam.guest_errors == 0


def test_ecam_hostile_accesses() -> None:
    rig = Rig()
    assert rig.mmio.read(PCI_ECAM_BASE + 1, 2) == 0xFFFF
    assert rig.mmio.read(PCI_ECAM_BASE + 2, 4) == 0xFFFF_FFFF
    assert rig.mmio.read(PCI_ECAM_BASE, 8) == 0xFFFF_FFFF_FFFF_FFFF
    rig.mmio.write(PCI_ECAM_BASE + 4, 8, 0xFFFF)
    rig.mmio.write(PCI_ECAM_BASE + 5, 2, 0xFFFF)
    assert rig.cfg_read(0, 4, 2, ecam=True) == 0
    assert rig.host.ecam.guest_errors == 5
    assert rig.mmio.read(PCI_ECAM_BASE + (16 << 20), 4) == 0xFFFF_FFFF  # past the window: unmapped


def test_host_bridge() -> None:
    rig = Rig()
    assert rig.cfg_read(0, 0) == 0x0008_1B36
    assert rig.cfg_read(0, 8) >> 8 == 0x060000
    assert rig.cfg_read(0, 0x0E, 1) == 0
    assert rig.host.functions == {0: rig.host.bridge}


# -- registry ----------------------------------------------------------------------------------
def test_slots_are_deterministic() -> None:
    rig = Rig()
    a, b, c, d = (PciFunction(vendor_id=1, device_id=i, name=f"f{i}") for i in range(4))
    assert rig.host.add(a) == 1
    assert rig.host.add(b, slot=5) == 5
    assert rig.host.add(c) == 2
    with pytest.raises(ConfigError, match="taken"):
        rig.host.add(d, slot=5)
    with pytest.raises(ConfigError):
        rig.host.add(d, slot=32)
    with pytest.raises(ConfigError, match="already"):
        rig.host.add(a)
    assert rig.host.add(d) == 3
    assert list(rig.host.functions) == [0, 1, 2, 3, 5]
    for i in range(27):
        rig.host.add(PciFunction(vendor_id=2, device_id=i))
    with pytest.raises(ConfigError, match="full"):
        rig.host.add(PciFunction(vendor_id=3, device_id=3))


def test_remove_frees_slot_and_regions() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    assert rig.pio.find(0x6200) is not None
    rig.host.remove(fn)
    assert rig.pio.find(0x6200) is None and rig.cfg_read(1, 0) == 0xFFFF_FFFF
    assert rig.doorbells is not None and rig.doorbells.handles == []


# -- allocators --------------------------------------------------------------------------------
def test_allocators() -> None:
    io = IoAllocator()
    assert [io.alloc(0x100), io.alloc(4), io.alloc(0x100), io.alloc(0x10)] == [0x6200, 0x6300, 0x6400, 0x6500]
    mm = MmioAllocator()
    assert mm.alloc(0x100) == 0xC200_0000
    assert mm.alloc(0x100) == 0xC200_0100
    assert mm.alloc(0x1000) == 0xC200_1000
    assert mm.alloc(0x100) == 0xC200_2000
    assert mm.alloc(0x100_0000) == 0xC300_0000
    with pytest.raises(ConfigError, match="exhausted"):
        mm.alloc(0x1000_0000)
    small = IoAllocator(start=0xFE00)
    small.alloc(0x100)
    small.alloc(0x100)
    with pytest.raises(ConfigError):
        small.alloc(4)


def test_add_places_and_decodes_bars() -> None:
    rig = Rig()
    f1, f2 = two_bar_fn("a"), two_bar_fn("b", mem=0x100)
    rig.host.add(f1)
    rig.host.add(f2)
    assert rig.cfg_read(1, 0x10) == 0x6201 and rig.cfg_read(1, 0x14) == 0xC200_0000
    assert rig.cfg_read(2, 0x10) == 0x6301 and rig.cfg_read(2, 0x14) == 0xC200_1000
    assert rig.cfg_read(1, 4, 2) == 0x3
    assert rig.pio.read(0x6304, 2) == 0xAB04
    assert rig.mmio.read(0xC200_0010, 4) == 0xAB10
    assert rig.mmio.read(0xC200_1100, 4) == 0xFFFF_FFFF  # past f2's 0x100-byte BAR


def test_add_refuses_a_collision() -> None:
    rig = Rig()
    rig.pio.register(0x6200, 0x10, Regs("legacy"))
    with pytest.raises(ConfigError, match="collides"):
        rig.host.add(two_bar_fn())
    assert list(rig.host.functions) == [0]
    assert rig.mmio.find(0xC200_0000) is None


# -- BAR decode follows the guest --------------------------------------------------------------
def test_command_toggles_decode_and_doorbells() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    db_io = fn.add_doorbell(0, 0x10, 2, lambda kicks: None)
    db_mem = fn.add_doorbell(1, 0x20, 4, lambda kicks: None, datamatch=7)
    assert rig.doorbells is not None
    assert rig.doorbells.at(True, 0x6210) and rig.doorbells.at(False, 0xC200_0020)
    rig.cfg_write(1, 4, 2, 0x2)  # IO off
    assert rig.pio.read(0x6200, 4) == 0xFFFF_FFFF and db_io.handle is None
    assert not rig.doorbells.at(True, 0x6210)
    assert rig.mmio.read(0xC200_0000, 4) == 0xAB00 and db_mem.handle is not None
    rig.cfg_write(1, 4, 2, 0x0)  # MEM off too
    assert rig.mmio.read(0xC200_0000, 4) == 0xFFFF_FFFF and rig.doorbells.handles == []
    rig.cfg_write(1, 4, 2, 0x3)
    assert rig.pio.read(0x6200, 4) == 0xAB00 and len(rig.doorbells.handles) == 2
    assert rig.doorbells.at(False, 0xC200_0020)[0].datamatch == 7
    assert fn.guest_errors == 0


def test_moving_an_io_bar() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    kicks: list[int] = []
    fn.add_doorbell(0, 0x10, 2, kicks.append)
    rig.cfg_write(1, 0x10, 4, 0x7000)
    assert rig.cfg_read(1, 0x10) == 0x7001
    assert rig.pio.read(0x6200, 2) == 0xFFFF and rig.pio.read(0x7002, 2) == 0xAB02
    assert rig.guest_write(True, 0x7010, 2, 1) and kicks == [1]
    assert not rig.guest_write(True, 0x6210, 2, 1) and kicks == [1]
    assert fn.bars[0].mapped == 0x7000 and fn.guest_errors == 0


def test_moving_a_mem_bar_byte_by_byte() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    rig.cfg_write(1, 0x15, 1, 0x50)  # byte 1 of BAR1: 0xC2005000
    assert fn.bars[1].mapped == 0xC200_5000
    assert rig.mmio.read(0xC200_0000, 4) == 0xFFFF_FFFF
    assert rig.mmio.read(0xC200_5008, 4) == 0xAB08
    assert rig.mmio.find(0xC200_0000) is None


def test_moving_a_64bit_bar() -> None:
    rig = Rig()
    fn = PciFunction(vendor_id=1, device_id=2, name="m64")
    fn.add_bar(0, BarKind.MEM64, 0x4000, Regs())
    rig.host.add(fn)
    assert rig.cfg_read(1, 0x10) == 0xC200_0004 and rig.cfg_read(1, 0x14) == 0
    rig.cfg_write(1, 4, 2, 0)  # Linux: decode off while moving
    rig.cfg_write(1, 0x10, 4, 0xC300_0000)
    rig.cfg_write(1, 0x14, 4, 0)
    rig.cfg_write(1, 4, 2, 2)
    assert fn.bars[0].mapped == 0xC300_0000 and rig.mmio.read(0xC300_3FFC, 4) == 0xAB00 + 0x3FFC
    rig.cfg_write(1, 0x14, 4, 1)  # above 4 GiB: outside the window
    assert fn.bars[0].mapped is None and fn.guest_errors == 1
    assert rig.cfg_read(1, 0x14) == 1  # the value stays
    rig.cfg_write(1, 0x14, 4, 0)
    assert fn.bars[0].mapped == 0xC300_0000


@pytest.mark.parametrize(
    ("reg", "value", "pio"),
    [
        (0x14, 0x0010_0000, False),  # on guest RAM
        (0x14, 0xC100_0000, False),  # on the ECAM window (in the hole, outside the BAR window)
        (0x14, 0xFEC0_0000, False),  # on the in-kernel IOAPIC
        (0x14, 0xD000_0000, False),  # just past the end of the window
        (0x10, 0x0300, True),  # over the UART's ports (legacy range)
        (0x10, 0xFF00, True),  # fine: last block of the IO window
    ],
)
def test_bars_outside_their_window_are_not_decoded(reg: int, value: int, pio: bool) -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    bar = fn.bars[(reg - 0x10) // 4]
    rig.cfg_write(1, reg, 4, value)
    assert rig.cfg_read(1, reg) & ~0xF == value
    if value == 0xFF00:
        assert bar.mapped == 0xFF00 and fn.guest_errors == 0
        return
    assert bar.mapped is None and fn.guest_errors == 1
    region = rig.bus_for(pio).find(value)
    assert region is None or region.owner is not fn
    rig.cfg_write(1, 4, 2, 0)  # toggling decode: not counted again
    rig.cfg_write(1, 4, 2, 3)
    assert fn.guest_errors == 1


def test_bar_onto_another_bar_is_blocked_then_retried() -> None:
    rig = Rig()
    a, b = two_bar_fn("a"), two_bar_fn("b")
    rig.host.add(a)
    rig.host.add(b)
    rig.cfg_write(2, 0x14, 4, 0xC200_0000)  # b's BAR1 onto a's BAR1
    assert b.bars[1].mapped is None and b.guest_errors == 1
    assert rig.mmio.read(0xC200_0000, 4) == 0xAB00
    assert rig.mmio.find(0xC200_0000).device.name == "a-mem"  # type: ignore[union-attr]
    rig.cfg_write(2, 0x10, 4, 0x6200)  # b's BAR0 onto a's BAR0 too
    assert b.bars[0].mapped is None and b.guest_errors == 2
    rig.cfg_write(1, 0x14, 4, 0xC210_0000)  # a moves away: b's BAR1 comes alive
    assert b.bars[1].mapped == 0xC200_0000
    assert rig.mmio.find(0xC200_0000).device.name == "b-mem"  # type: ignore[union-attr]
    rig.cfg_write(1, 4, 2, 0)  # a stops decoding: b's BAR0 too
    assert b.bars[0].mapped == 0x6200
    assert b.guest_errors == 2 and a.guest_errors == 0


def test_sizing_with_decode_on_is_quiet() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    rig.cfg_write(1, 0x14, 4, 0xFFFF_FFFF)
    assert rig.cfg_read(1, 0x14) == 0xFFFF_F000 and fn.bars[1].mapped is None
    rig.cfg_write(1, 0x14, 4, 0xC200_0000)
    assert fn.bars[1].mapped == 0xC200_0000 and fn.guest_errors == 0
    rig.cfg_write(1, 0x14, 4, 0)  # address 0: unprogrammed
    assert fn.bars[1].mapped is None and fn.guest_errors == 0


def test_doorbell_registration_failure_falls_back() -> None:
    class Refusing(FakeDoorbells):
        def add(self, **kw: object) -> object:
            raise KvmError("KVM_IOEVENTFD", 17, "File exists")

    pio, mmio = PioBus(), MmioBus()
    host = PciHost(pio, mmio, doorbells=Refusing())
    fn = two_bar_fn()
    host.add(fn)
    spec = fn.add_doorbell(0, 0x10, 2, lambda kicks: None)
    assert spec.handle is None and fn.bars[0].mapped == 0x6200


def test_doorbell_checks() -> None:
    fn = two_bar_fn()
    with pytest.raises(ConfigError):
        fn.add_doorbell(2, 0, 4, lambda kicks: None)
    with pytest.raises(ConfigError):
        fn.add_doorbell(0, 0xFE, 4, lambda kicks: None)
    with pytest.raises(ConfigError):
        fn.add_doorbell(0, 0x10, 3, lambda kicks: None)


def test_describe() -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    lines = rig.host.describe()
    assert lines[0].startswith("00:00.0 1b36:0008 class 060000 host-bridge")
    assert lines[1] == "00:01.0 1af4:10f3 class 000000 dev, BAR0 io 0x6200+0x100, BAR1 mem32 0xc2000000+0x1000"
    rig.cfg_write(1, 4, 2, 0)
    assert "0x6200 (off)" in rig.host.describe()[1]


# QEMU 7.2 under -accel kvm, measured with guests/multiboot/mbplat.c's "cf8probe" on its 00:00.0
# (bytes 86 80 37 12 03 01 ...): register = (latch & 0xFF) | (port & 3); unaligned accesses go byte by byte.
@pytest.mark.parametrize(
    "latch_low, port, size, want",
    [
        (2, 0, 4, 0x0403_10F3),  # bytes 2..5 in one piece
        (1, 0, 2, 0xF31A),
        (1, 2, 2, 0x0310),  # 1 | 2 = 3: bytes 3..4
        (2, 2, 2, 0x10F3),  # 2 | 2 = 2, not 4
        (3, 3, 1, 0x10),
        (1, 1, 2, 0x10_1A),  # unaligned: byte 1|1 = 1, then byte 1|2 = 3
        (3, 1, 2, 0x1010),  # bytes 3|1 and 3|2: both 3
    ],
)
def test_conf1_latch_low_bits_follow_qemu(latch_low: int, port: int, size: int, want: int) -> None:
    rig = Rig()
    fn = two_bar_fn()
    rig.host.add(fn)
    fn.config.data[4:6] = (0x0403).to_bytes(2, "little")  # COMMAND, so bytes 4-5 are known
    rig.pio.write(0xCF8, 4, conf1_address(1, 0) | latch_low)
    assert rig.pio.read(0xCFC + port, size) == want


def test_conf1_latch_low_bits_writes_and_the_end_of_the_header() -> None:
    rig = Rig()
    rig.host.add(two_bar_fn())
    rig.pio.write(0xCF8, 4, conf1_address(1, 0x38) | 1)
    rig.pio.write(0xCFC, 4, 0x4433_2211)  # lands at 0x39..0x3C: the interrupt line takes 0x44
    assert rig.cfg_read(1, 0x3C, 1) == 0x44
    rig.pio.write(0xCF8, 4, conf1_address(1, 0x38) | 3)
    rig.pio.write(0xCFD, 2, 0x2211)  # unaligned: bytes at 0x3B twice, 0x3C untouched
    assert rig.cfg_read(1, 0x3C, 1) == 0x44
    rig.pio.write(0xCF8, 4, conf1_address(1, 0xFC) | 3)
    assert rig.pio.read(0xCFC, 4) == rig.cfg_read(1, 0xFF, 1)  # 0xFF alone; the rest reads 0
    assert rig.host.conf1.guest_errors == 0
