"""Configuration space, BAR registers, INTx, MSI and MSI-X of a single function."""

from __future__ import annotations

import pytest

from broiler.core.bus import Device
from broiler.errors import ConfigError
from broiler.pci import BarKind, ConfigSpace, PciFunction
from broiler.pci.config import (
    CAP_ID_MSI,
    CAP_ID_MSIX,
    CAPABILITY_LIST,
    CMD_INTX_DISABLE,
    CMD_WRITABLE,
    COMMAND,
    STATUS,
    STATUS_CAP_LIST,
    STATUS_INTERRUPT,
)
from tests.unit.fakes import FakeIrqLine, FakeMsiSink
from tests.unit.pci_fakes import Rig


class Regs(Device):
    name = "regs"

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x1000 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def make_fn(**kw: int) -> PciFunction:
    return PciFunction(
        vendor_id=0x1234,
        device_id=0x5678,
        class_code=0x020000,
        revision=3,
        subsystem_vendor_id=0xAAAA,
        subsystem_id=0xBBBB,
        name="t",
        **kw,
    )


# -- ConfigSpace -------------------------------------------------------------------------------
def test_masks_merge_writable_bits_and_clear_w1c() -> None:
    cs = ConfigSpace()
    cs.set(0x50, 4, 0x1122_3344)
    cs.set_masks(0x50, 4, wmask=0x0000_FF00, w1c=0x00FF_0000)
    cs.write(0x50, 4, 0xFFFF_AAFF)
    assert cs.read(0x50, 4) == 0x1100_AA44
    cs.write(0x51, 1, 0x01)  # a byte write touches only its byte
    assert cs.read(0x50, 4) == 0x1100_0144


def test_capability_chain() -> None:
    cs = ConfigSpace()
    a = cs.add_capability(0x09, 6)
    b = cs.add_capability(0x10, 12)
    assert (a, b) == (0x40, 0x48)
    assert cs.get(CAPABILITY_LIST, 1) == 0x40 and cs.get(0x41, 1) == 0x48 and cs.get(0x49, 1) == 0
    assert cs.get(STATUS, 2) & STATUS_CAP_LIST
    assert cs.capabilities() == [(0x40, 0x09), (0x48, 0x10)]


def test_capability_space_runs_out() -> None:
    cs = ConfigSpace()
    cs.add_capability(1, 0xB0)
    with pytest.raises(ValueError):
        cs.add_capability(2, 0x20)


# -- header ------------------------------------------------------------------------------------
def test_header_fields_and_read_only_registers() -> None:
    fn = make_fn()
    assert fn.read(0, 4) == 0x5678_1234
    assert fn.read(0x08, 4) == 0x0200_0003  # class 02/00/00, revision 3
    assert fn.read(0x0E, 1) == 0  # header type 0, single function
    assert fn.read(0x2C, 4) == 0xBBBB_AAAA
    assert fn.read(CAPABILITY_LIST, 1) == 0 and not fn.read(STATUS, 2) & STATUS_CAP_LIST
    for reg in (0x00, 0x08, 0x2C, 0x30, 0x34):
        before = fn.read(reg, 4)
        fn.write(reg, 4, 0xFFFF_FFFF)
        assert fn.read(reg, 4) == before
    fn.write(0x0E, 1, 0x80)
    assert fn.read(0x0E, 1) == 0
    assert fn.read(0x30, 4) == 0  # no expansion ROM: sizing reads 0
    assert fn.guest_errors == 0


def test_command_writable_bits_only() -> None:
    fn = make_fn()
    fn.write(COMMAND, 2, 0xFFFF)
    assert fn.read(COMMAND, 2) == CMD_WRITABLE
    fn.write(COMMAND, 2, 0)
    assert fn.read(COMMAND, 2) == 0


def test_status_write_one_to_clear() -> None:
    fn = make_fn()
    fn.config.set(STATUS, 2, 0xF910)
    fn.write(STATUS, 2, 0x0100)
    assert fn.read(STATUS, 2) == 0xF810
    fn.write(STATUS, 2, 0x0010 | 0x0008)  # read-only bits stay
    assert fn.read(STATUS, 2) == 0xF810
    fn.write(COMMAND, 4, 0xFFFF_0000)  # dword write over command + status
    assert fn.read(STATUS, 2) == 0x0010


def test_interrupt_line_is_writable_pin_is_not() -> None:
    fn = make_fn()
    fn.set_intx(FakeIrqLine(gsi=9))
    assert fn.read(0x3C, 2) == 0x0109
    fn.write(0x3C, 2, 0x040B)
    assert fn.read(0x3C, 2) == 0x010B


def test_extended_and_bad_config_accesses() -> None:
    fn = make_fn()
    assert fn.read(0x100, 4) == 0xFFFF_FFFF
    assert fn.read(0xFFC, 4) == 0xFFFF_FFFF
    assert fn.read(0, 8) == 0xFFFF_FFFF_FFFF_FFFF
    fn.write(0x100, 4, 1)
    fn.write(0xFE, 4, 1)
    assert fn.guest_errors == 2


# -- BAR registers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "size", "prefetch", "low", "high"),
    [
        (BarKind.IO, 0x100, False, 0xFFFF_FF01, None),
        (BarKind.IO, 0x4, False, 0xFFFF_FFFD, None),
        (BarKind.MEM32, 0x1000, False, 0xFFFF_F000, None),
        (BarKind.MEM32, 0x1000, True, 0xFFFF_F008, None),
        (BarKind.MEM64, 0x4000, False, 0xFFFF_C004, 0xFFFF_FFFF),
        (BarKind.MEM64, 0x10, True, 0xFFFF_FFFC, 0xFFFF_FFFF),
    ],
)
def test_bar_sizing(kind: BarKind, size: int, prefetch: bool, low: int, high: int | None) -> None:
    fn = make_fn()
    fn.add_bar(0, kind, size, Regs(), prefetchable=prefetch)
    type_bits = low & (0x3 if kind is BarKind.IO else 0xF)
    assert fn.read(0x10, 4) == type_bits
    fn.write(0x10, 4, 0xFFFF_FFFF)
    assert fn.read(0x10, 4) == low
    assert (~(low & ~(0x3 if kind is BarKind.IO else 0xF)) + 1) & 0xFFFF_FFFF == size
    if high is not None:
        fn.write(0x14, 4, 0xFFFF_FFFF)
        assert fn.read(0x14, 4) == high
    fn.write(0x10, 4, 0)
    assert fn.read(0x10, 4) == type_bits


def test_partial_bar_writes_merge() -> None:
    fn = make_fn()
    fn.add_bar(0, BarKind.MEM32, 0x1000, Regs())
    fn.add_bar(2, BarKind.IO, 0x100, Regs())
    fn.write(0x10, 4, 0xC200_0000)
    fn.write(0x11, 1, 0xFF)  # byte 1: only bits 15:12 are address bits
    assert fn.read(0x10, 4) == 0xC200_F000
    fn.write(0x12, 2, 0xC3AB)
    assert fn.read(0x10, 4) == 0xC3AB_F000
    fn.write(0x18, 2, 0x6A55)
    assert fn.read(0x18, 4) == 0x0000_6A01
    fn.write(0x1A, 1, 0x01)
    assert fn.read(0x18, 4) == 0x0001_6A01


def test_unimplemented_bars_read_zero() -> None:
    fn = make_fn()
    fn.add_bar(1, BarKind.IO, 0x100, Regs())
    for reg in (0x10, 0x18, 0x1C, 0x20, 0x24):
        fn.write(reg, 4, 0xFFFF_FFFF)
        assert fn.read(reg, 4) == 0


def test_add_bar_checks() -> None:
    fn = make_fn()
    with pytest.raises(ConfigError):
        fn.add_bar(0, BarKind.IO, 0x30, Regs())
    with pytest.raises(ConfigError):
        fn.add_bar(0, BarKind.IO, 0x200, Regs())
    with pytest.raises(ConfigError):
        fn.add_bar(0, BarKind.MEM32, 8, Regs())
    with pytest.raises(ConfigError):
        fn.add_bar(5, BarKind.MEM64, 0x100, Regs())
    with pytest.raises(ConfigError):
        fn.add_bar(6, BarKind.IO, 0x100, Regs())
    fn.add_bar(0, BarKind.MEM64, 0x100, Regs())
    with pytest.raises(ConfigError):
        fn.add_bar(1, BarKind.IO, 0x100, Regs())
    rig = Rig()
    rig.host.add(fn)
    with pytest.raises(ConfigError):
        fn.add_bar(2, BarKind.IO, 0x100, Regs())


# -- INTx --------------------------------------------------------------------------------------
def test_intx_level_status_and_disable() -> None:
    fn = make_fn()
    line = FakeIrqLine(gsi=11)
    fn.set_intx(line)
    fn.raise_intx()
    assert line.level == 1 and fn.read(STATUS, 2) & STATUS_INTERRUPT
    fn.raise_intx()  # no second edge for a level line
    assert line.history == [1]
    fn.write(COMMAND, 2, CMD_INTX_DISABLE)
    assert line.level == 0 and fn.read(STATUS, 2) & STATUS_INTERRUPT
    fn.write(COMMAND, 2, 0)
    assert line.level == 1
    fn.lower_intx()
    assert line.history == [1, 0, 1, 0] and not fn.read(STATUS, 2) & STATUS_INTERRUPT


# -- MSI ---------------------------------------------------------------------------------------
def test_msi_broiler_layout_and_enable() -> None:
    fn = make_fn()
    sink = FakeMsiSink()
    msi = fn.add_msi(sink)
    assert msi.offset == 0x40 and fn.read(CAPABILITY_LIST, 1) == 0x40
    assert fn.read(0x40, 4) == CAP_ID_MSI  # id 5, next 0, control 0
    assert not msi.notify()  # disabled: nothing sent
    assert msi.dropped == 1 and sink.messages == []
    fn.write(0x44, 4, 0xFEE0_100F)
    fn.write(0x48, 2, 0x4041)
    assert fn.read(0x44, 4) == 0xFEE0_100C  # address bits 1:0 read 0
    fn.write(0x42, 2, 0xFFFF)
    assert fn.read(0x42, 2) == 0x0071  # enable + MME writable; MMC=0, no 64-bit/mask
    assert msi.notify()
    assert sink.messages == [(0xFEE0_100C, 0x4041)]
    assert not msi.notify(1)  # only one vector


def test_msi_64bit_per_vector_mask_and_pending() -> None:
    fn = make_fn()
    sink = FakeMsiSink()
    msi = fn.add_msi(sink, vectors=4, is64=True, per_vector_mask=True)
    o = msi.offset
    assert fn.read(o + 2, 2) == (2 << 1) | 0x80 | 0x100
    fn.write(o + 4, 4, 0xFEE0_0000)
    fn.write(o + 8, 4, 0x1)
    fn.write(o + 0xC, 2, 0x30)
    fn.write(o + 2, 2, 0x0021)  # enable, 4 vectors (MME=2)
    assert msi.enabled_vectors == 4
    fn.write(o + 0x10, 4, 0xFFFF_FFFF)
    assert fn.read(o + 0x10, 4) == 0xF  # one mask bit per capable vector
    assert not msi.notify(2)
    assert fn.read(o + 0x14, 4) == 0b100 and sink.messages == []
    fn.write(o + 0x14, 4, 0)  # pending is read-only
    assert fn.read(o + 0x14, 4) == 0b100
    fn.write(o + 0x10, 4, 0b1011)  # unmask vector 2 only
    assert sink.messages == [(0x1_FEE0_0000, 0x32)]
    assert fn.read(o + 0x14, 4) == 0
    fn.write(o + 0x10, 4, 0)
    assert msi.notify(3) and sink.messages[-1] == (0x1_FEE0_0000, 0x33)
    fn.write(o + 2, 2, 0x0011)  # only 2 vectors enabled now
    assert not msi.notify(3)


def test_msi_pending_waits_for_enable() -> None:
    fn = make_fn()
    sink = FakeMsiSink()
    msi = fn.add_msi(sink, per_vector_mask=True)
    o = msi.offset
    fn.write(o + 2, 2, 1)
    fn.write(o + 0xC, 4, 1)
    assert not msi.notify()
    fn.write(o + 2, 2, 0)
    fn.write(o + 0xC, 4, 0)  # unmasked while disabled: stays pending
    assert sink.messages == [] and msi.pending == 1
    fn.write(o + 2, 2, 1)
    assert len(sink.messages) == 1 and msi.pending == 0


# -- MSI-X -------------------------------------------------------------------------------------
def msix_rig(vectors: int = 4) -> tuple[Rig, PciFunction, FakeMsiSink, int]:
    rig = Rig()
    fn = make_fn()
    fn.add_bar(0, BarKind.IO, 0x100, Regs())
    fn.add_bar(1, BarKind.MEM32, 0x1000, Regs())
    sink = FakeMsiSink()
    fn.add_msix(sink, bar=1, vectors=vectors, table_offset=0x800, pba_offset=0xC00)
    assert rig.host.add(fn) == 1
    assert fn.bars[1].mapped is not None
    return rig, fn, sink, fn.bars[1].mapped


def test_msix_capability_layout() -> None:
    rig, fn, _, _ = msix_rig(vectors=5)
    assert fn.msix is not None
    o = fn.msix.offset
    assert rig.cfg_read(1, o) == CAP_ID_MSIX | (4 << 16)
    assert rig.cfg_read(1, o + 4) == 0x800 | 1
    assert rig.cfg_read(1, o + 8) == 0xC00 | 1
    rig.cfg_write(1, o + 2, 2, 0xFFFF)
    assert rig.cfg_read(1, o + 2, 2) == 0xC004  # only enable and function mask are writable


def test_msix_masking_pending_and_delivery_on_unmask() -> None:
    rig, fn, sink, bar = msix_rig()
    assert fn.msix is not None
    o = fn.msix.offset
    table, pba = bar + 0x800, bar + 0xC00
    assert rig.mmio.read(table + 12, 4) == 1  # entries start masked
    assert not fn.msix.notify(0)  # MSI-X disabled: dropped, not pending
    assert rig.mmio.read(pba, 8) == 0 and fn.msix.dropped == 1
    rig.cfg_write(1, o + 2, 2, 0xC000)  # enable + function mask
    rig.mmio.write(table + 0x10, 8, 0x0000_0000_FEE0_2003)  # entry 1 address (bits 1:0 read 0)
    rig.mmio.write(table + 0x18, 4, 0x51)
    assert rig.mmio.read(table + 0x10, 8) == 0xFEE0_2000
    rig.mmio.write(table + 0x1C, 4, 0)  # vector 1 unmasked, but function masked
    assert not fn.msix.notify(1)
    assert rig.mmio.read(pba, 8) == 0b10 and sink.messages == []
    rig.cfg_write(1, o + 2, 2, 0x8000)  # clear function mask: delivered once
    assert sink.messages == [(0xFEE0_2000, 0x51)]
    assert rig.mmio.read(pba, 4) == 0
    rig.mmio.write(table + 0x1C, 4, 1)  # mask vector 1
    assert not fn.msix.notify(1) and not fn.msix.notify(1)  # two signals, one pending bit
    assert rig.mmio.read(pba, 4) == 0b10
    rig.mmio.write(table + 0x18, 8, 0x52)  # qword over data + control: unmask
    assert sink.messages[-1] == (0xFEE0_2000, 0x52) and len(sink.messages) == 2
    assert fn.msix.notify(1) and len(sink.messages) == 3
    assert not fn.msix.notify(4) and fn.msix.dropped == 2  # no such vector


def test_msix_hostile_accesses() -> None:
    rig, fn, sink, bar = msix_rig()
    assert fn.msix is not None
    table, pba = bar + 0x800, bar + 0xC00
    assert rig.mmio.read(table + 2, 2) == 0xFFFF
    assert rig.mmio.read(table + 4, 8) == 0xFFFF_FFFF_FFFF_FFFF
    rig.mmio.write(table + 12, 1, 0)  # byte write: dropped
    assert fn.msix.vector_masked(0)
    rig.mmio.write(pba, 8, 0xFF)
    assert rig.mmio.read(pba, 8) == 0
    assert rig.mmio.read(table + 4 * 16, 4) == 0x1000 + 0x800 + 0x40  # past the table: BAR's device
    errors = fn.msix.table_device.guest_errors + fn.msix.pba_device.guest_errors
    assert errors == 4


def test_msix_checks() -> None:
    fn = make_fn()
    fn.add_bar(0, BarKind.IO, 0x100, Regs())
    fn.add_bar(1, BarKind.MEM32, 0x100, Regs())
    sink = FakeMsiSink()
    with pytest.raises(ConfigError):
        fn.add_msix(sink, bar=0, vectors=1)
    with pytest.raises(ConfigError):
        fn.add_msix(sink, bar=1, vectors=16)  # table + PBA do not fit in 0x100
    with pytest.raises(ValueError):
        fn.add_msix(sink, bar=1, vectors=2, table_offset=0, pba_offset=0x10)


def test_msi_and_msix_chain() -> None:
    fn = make_fn()
    fn.add_bar(0, BarKind.MEM32, 0x1000, Regs())
    fn.add_msi(FakeMsiSink(), is64=True)
    fn.add_msix(FakeMsiSink(), bar=0, vectors=2)
    assert fn.config.capabilities() == [(0x40, CAP_ID_MSI), (0x50, CAP_ID_MSIX)]
