"""QEMU's pci-testdev, driven the way kvm-unit-tests' lib/pci-testdev.c drives it."""

from __future__ import annotations

import pytest

from broiler.devices.testdev.pci_testdev import PciTestDev
from tests.unit.pci_fakes import Rig

NAMES = [
    "mmio-no-eventfd",
    "mmio-wildcard-eventfd",
    "mmio-datamatch-eventfd",
    "portio-no-eventfd",
    "portio-wildcard-eventfd",
    "portio-datamatch-eventfd",
]


def setup(doorbells: bool = True) -> tuple[Rig, PciTestDev, int, int]:
    rig = Rig(doorbells=doorbells)
    dev = PciTestDev()
    rig.host.add(dev)
    mem, io = dev.bars[0].mapped, dev.bars[1].mapped
    assert mem is not None and io is not None
    return rig, dev, mem, io


class Guest:
    """The guest side: byte/word/dword reads and writes through one BAR, as kvm-unit-tests does."""

    def __init__(self, rig: Rig, pio: bool, base: int) -> None:
        self.rig, self.pio, self.base = rig, pio, base

    def read(self, off: int, size: int) -> int:
        return self.rig.bus_for(self.pio).read(self.base + off, size)

    def write(self, off: int, size: int, value: int) -> None:
        self.rig.guest_write(self.pio, self.base + off, size, value)

    def name(self) -> str:
        out = bytearray()
        while (c := self.read(16 + len(out), 1)) != 0:
            out.append(c)
        return out.decode()

    def one(self, test_nr: int) -> tuple[bool, int]:
        """pci_testdev_one(): (passed, count)."""
        self.write(0, 1, test_nr)
        if self.read(12, 4) != 0:
            return False, -1
        width = self.read(1, 1)
        if width not in (1, 2, 4):
            return False, -1
        sig, off = self.read(8, 4), self.read(4, 4)
        for _ in range(16):
            self.write(off, width, sig)
        count = self.read(12, 4)
        return (count == 0 or count == 16), count


def test_identity_and_bars() -> None:
    rig, dev, mem, io = setup()
    assert rig.cfg_read(1, 0) == 0x0005_1B36
    assert rig.cfg_read(1, 8) == 0x00FF_0000  # class 00/ff/00 (as QEMU), revision 0
    assert rig.cfg_read(1, 0x3D, 1) == 0  # no interrupt pin
    rig.cfg_write(1, 0x10, 4, 0xFFFF_FFFF)
    rig.cfg_write(1, 0x14, 4, 0xFFFF_FFFF)
    assert rig.cfg_read(1, 0x10) == 0xFFFF_F000  # 4 KiB memory
    assert rig.cfg_read(1, 0x14) == 0xFFFF_FF01  # 256 ports
    assert rig.cfg_read(1, 4, 2) == 3


@pytest.mark.parametrize("doorbells", [True, False])
def test_the_six_tests_like_kvm_unit_tests(doorbells: bool) -> None:
    rig, dev, mem, io = setup(doorbells)
    results = []
    for pio, base in ((False, mem), (True, io)):
        g = Guest(rig, pio, base)
        for k in range(4):
            ok, count = g.one(k)
            if not ok:
                break
            if k == 3:  # k >= 3 selects nothing: all reads 0
                assert (g.read(0, 4), g.read(12, 4), g.name()) == (0, 0, "")
                break
            results.append((g.name(), count, g.read(0, 1), g.read(4, 4), g.read(8, 4)))
    assert [r[0] for r in results] == NAMES
    assert [r[1] for r in results] == [16, 0, 0, 16, 0, 0]
    assert [r[2] for r in results] == list(range(6))
    assert [r[3] for r in results] == [2048, 2049, 2050, 131, 132, 133]
    assert [r[4] for r in results] == [0xFA, 0xCE, 0xFA, 0xFA, 0xCE, 0xFA]
    assert dev.notifier_kicks == 4 * 16
    if rig.doorbells is not None:
        assert rig.doorbells.handles == []  # all removed again
        assert rig.doorbells.added == rig.doorbells.removed == 4


def test_doorbell_lifecycle() -> None:
    rig, dev, mem, io = setup()
    assert rig.doorbells is not None
    db = rig.doorbells
    assert db.handles == []
    rig.mmio.write(mem, 1, 1)  # mmio wildcard
    (h,) = db.handles
    assert (h.pio, h.addr, h.length, h.datamatch) == (False, mem + 2049, 1, None)
    rig.pio.write(io, 1, 2)  # switching removes the previous one
    (h,) = db.handles
    assert (h.pio, h.addr, h.length, h.datamatch) == (True, io + 133, 1, 0xFA)
    rig.pio.write(io, 1, 0)  # no-eventfd test: no doorbell
    assert db.handles == []
    rig.mmio.write(mem, 1, 2)
    rig.mmio.write(mem, 1, 7)  # k >= 3: deselect
    assert db.handles == [] and dev.current == -1


def test_doorbell_follows_the_bar_while_selected() -> None:
    rig, dev, mem, io = setup()
    assert rig.doorbells is not None
    rig.pio.write(io, 1, 1)  # portio wildcard
    rig.cfg_write(1, 0x14, 4, 0x8000)
    (h,) = rig.doorbells.handles
    assert h.addr == 0x8000 + 132
    assert rig.guest_write(True, 0x8000 + 132, 1, 0x11)
    assert rig.pio.read(0x8000 + 12, 4) == 0 and dev.notifier_kicks == 1
    rig.cfg_write(1, 4, 2, 2)  # IO decode off: doorbell gone
    assert rig.doorbells.handles == []
    rig.cfg_write(1, 4, 2, 3)
    assert [x.addr for x in rig.doorbells.handles] == [0x8000 + 132]


def test_byte_split_semantics() -> None:
    rig, dev, mem, io = setup()
    g = Guest(rig, False, mem)
    g.write(0, 4, 0x0000_0002)  # a dword write selects via its low byte
    assert g.read(0, 1) == 2
    g.write(2050, 2, 0x00FA)  # not what the doorbell catches: split
    g.write(2050, 1, 0xFB)  # wrong data
    g.write(2049, 2, 0xFA00)  # high byte lands on the offset
    assert g.read(12, 4) == 2 and dev.notifier_kicks == 0
    g.write(2050, 1, 0xFA)  # caught by the datamatch doorbell
    assert g.read(12, 4) == 2 and dev.notifier_kicks == 1
    g.write(0, 1, 1)  # wildcard: any byte at the offset counts
    g.write(2049, 2, 0x1234)
    g.write(2048, 4, 0x0000_5600)
    assert g.read(12, 4) == 2 and dev.notifier_kicks == 1
    g.write(0, 1, 0)  # no-eventfd: data must match
    g.write(2048, 1, 0xCE)
    g.write(2048, 1, 0xFA)
    assert g.read(12, 4) == 1


def test_reads_past_the_header_and_unselected() -> None:
    rig, dev, mem, io = setup()
    g = Guest(rig, True, io)
    assert g.read(0, 4) == 0 and g.read(16, 1) == 0
    g.write(0, 1, 0)
    end = 16 + len("portio-no-eventfd")
    assert g.read(16, 4) == int.from_bytes(b"port", "little")
    assert g.read(end - 1, 4) == ord("d")
    assert g.read(end, 1) == 0 and g.read(200, 4) == 0
    assert rig.mmio.read(mem + 4000, 8) == 0
    assert g.read(0, 1) == 3  # portio tests are 3..5, even via BAR1
    g.write(0, 1, 0xFF)
    assert dev.current == -1 and g.read(0, 1) == 0
    assert dev.guest_errors == 0
