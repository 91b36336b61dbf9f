"""pc-testdev registers through the buses, with the values QEMU 7.2 gave the mbtest guest."""

from __future__ import annotations

import pytest

from broiler.core.bus import MmioBus, PioBus, all_ones
from broiler.devices.testdev.pc_testdev import IOMEM_BASE, IOMEM_SIZE, IRQ_LINES, PcTestdev, register_pc_testdev
from tests.unit.fakes import fake_lines


class Rig:
    def __init__(self) -> None:
        self.pio, self.mmio = PioBus(), MmioBus()
        self.irqs: list[tuple[int, int]] = []
        self.flushed: list[int] = []
        self.dev: PcTestdev = register_pc_testdev(
            self.pio,
            self.mmio,
            lines=fake_lines(IRQ_LINES, self.irqs),
            flush_page=self.flushed.append,
        )


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_regions(rig: Rig) -> None:
    got = sorted((r.base, r.size, r.name) for r in rig.pio.regions())
    assert got == [
        (0xE0, 4, "pc-testdev-ioport"),
        (0xE4, 4, "pc-testdev-flush-page"),
        (0xE8, 4, "pc-testdev-ioport-byte"),
        (0x2000, 24, "pc-testdev-irq-line"),
    ]
    (r,) = rig.mmio.regions()
    assert (r.base, r.size) == (0xFF000000, 0x10000)
    assert rig.pio.unregister_owner("pc-testdev") == 4 and rig.mmio.unregister_owner("pc-testdev") == 1


def test_latch_widths(rig: Rig) -> None:
    pio = rig.pio
    pio.write(0xE0, 4, 0x12345678)
    assert pio.read(0xE0, 4) == 0x12345678
    pio.write(0xE1, 1, 0xAA)
    assert pio.read(0xE0, 4) == 0x1234AA78
    assert (pio.read(0xE1, 1), pio.read(0xE3, 1)) == (0xAA, 0x12)
    pio.write(0xE2, 2, 0xBEEF)
    assert pio.read(0xE0, 4) == 0xBEEFAA78
    assert (pio.read(0xE0, 2), pio.read(0xE2, 2)) == (0xAA78, 0xBEEF)


def test_byte_view_is_the_same_latch(rig: Rig) -> None:
    pio = rig.pio
    pio.write(0xE0, 4, 0xBEEFAA78)
    assert pio.read(0xE8, 4) == 0xBEEFAA78
    pio.write(0xE8, 4, 0xCAFEF00D)
    assert pio.read(0xE0, 4) == 0xCAFEF00D and pio.read(0xEA, 1) == 0xFE
    pio.write(0xEA, 2, 0x1122)
    assert pio.read(0xE0, 4) == 0x1122F00D and pio.read(0xE8, 2) == 0xF00D


def test_unaligned_latch_access_works_like_qemu(rig: Rig) -> None:
    # QEMU 7.2 + KVM: outl 0x11223344 @0xe0; outw 0xabcd @0xe1 -> inl 0x11abcd44, inw @0xe1 0xabcd
    rig.pio.write(0xE0, 4, 0x11223344)
    rig.pio.write(0xE1, 2, 0xABCD)
    assert rig.pio.read(0xE0, 4) == 0x11ABCD44 and rig.pio.read(0xE1, 2) == 0xABCD
    rig.pio.write(0xE3, 2, 0xFFFF)  # runs into 0xE4: the bus drops it
    assert rig.pio.read(0xE0, 4) == 0x11ABCD44 and rig.dev.flush.flushes == 0


def test_flush_page(rig: Rig) -> None:
    rig.pio.write(0xE4, 4, 0x0012_3456)
    assert rig.flushed == [0x0012_3000]
    rig.pio.write(0xE4, 2, 0x5000)  # not 32-bit: invalid, dropped
    rig.pio.write(0xE4, 1, 0x50)
    assert rig.flushed == [0x0012_3000] and rig.dev.flush.guest_errors == 2
    assert rig.pio.read(0xE4, 4) == 0


def test_irq_lines(rig: Rig) -> None:
    for n in range(24):
        rig.pio.write(0x2000 + n, 1, 0x80)
        rig.pio.write(0x2000 + n, 1, 0)
    assert rig.irqs == [(n, lvl) for n in range(24) for lvl in (1, 0)]
    rig.pio.write(0x2000, 2, 1)  # only byte writes are valid
    assert len(rig.irqs) == 48 and rig.dev.irq.guest_errors == 1
    assert rig.pio.read(0x2005, 1) == 0


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_iomem_reads_back_every_width(rig: Rig, size: int) -> None:
    value = 0x0123456789ABCDEF & all_ones(size)
    for off in (0, 0x10, IOMEM_SIZE - size):
        rig.mmio.write(IOMEM_BASE + off, size, value)
        assert rig.mmio.read(IOMEM_BASE + off, size) == value


def test_iomem_is_little_endian_bytes(rig: Rig) -> None:
    m = rig.mmio
    m.write(IOMEM_BASE + 0x10, 8, 0x0123456789ABCDEF)
    assert (m.read(IOMEM_BASE + 0x10, 1), m.read(IOMEM_BASE + 0x12, 2)) == (0xEF, 0x89AB)
    assert m.read(IOMEM_BASE + 0x14, 4) == 0x01234567
    m.write(IOMEM_BASE + 0x11, 1, 0x5A)
    m.write(IOMEM_BASE + 0x16, 2, 0xC0DE)
    assert m.read(IOMEM_BASE + 0x10, 8) == 0xC0DE456789AB5AEF
    m.write(IOMEM_BASE + 0x21, 2, 0xABCD)  # unaligned works (QEMU 7.2)
    assert m.read(IOMEM_BASE + 0x20, 4) == 0x00ABCD00 and m.read(IOMEM_BASE + 0x100, 8) == 0
