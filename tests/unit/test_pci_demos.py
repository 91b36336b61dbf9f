"""The seed's PCI demo devices and the DMA devices, driven through the real buses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broiler.core.memory import GuestMemory, MemoryMap, MiB
from broiler.devices.demo import pci_demos as demos
from broiler.devices.demo import pci_dma as dma
from broiler.pci import PciFunction
from tests.unit.fakes import FakeIrqLine, FakeMsiSink, FakeScheduler
from tests.unit.pci_fakes import Rig

RAM = 4 * MiB


def memory() -> GuestMemory:
    return GuestMemory(MemoryMap(RAM))


# -- identities --------------------------------------------------------------------------------
def build_all(rig: Rig, sched: FakeScheduler) -> dict[str, PciFunction]:
    mem = memory()
    sink = FakeMsiSink()
    devices: dict[str, PciFunction] = {
        "sync-pio": demos.SyncPioPci(),
        "sync-mmio": demos.SyncMmioPci(),
        "base": demos.PciBaseDemo(),
        "async-pio": demos.AsyncPioPci(irq=FakeIrqLine(8), schedule=sched),
        "async-mmio": demos.AsyncMmioPci(irq=FakeIrqLine(9), schedule=sched),
        "intx": demos.IntxDemoPci(irq=FakeIrqLine(10), schedule=sched),
        "msi": demos.MsiDemoPci(msi_sink=sink, schedule=sched),
        "msix": demos.MsixDemoPci(msi_sink=sink, schedule=sched),
        "dma-intx": dma.DmaIntxPci(memory=mem, irq=FakeIrqLine(11), schedule=sched),
        "dma-msi": dma.DmaMsiPci(memory=mem, msi_sink=sink, schedule=sched),
        "dma-msix": dma.DmaMsixPci(memory=mem, msi_sink=sink, schedule=sched),
        "dma-buf": dma.DmaBufPci(memory=mem, msi_sink=sink, schedule=sched),
    }
    for fn in devices.values():
        rig.host.add(fn)
    return devices


IDS = {
    "sync-pio": (0x1003, 0x1991, "io", 0x1),
    "sync-mmio": (0x1006, 0x1991, "mem32", 0x3),
    "base": (0x1016, 0x1413, "io mem32", 0x3),
    "async-pio": (0x1009, 0x1991, "io", 0x3),
    "async-mmio": (0x1008, 0x1991, "mem32", 0x3),
    "intx": (0x1016, 0x1991, "io", 0x3),
    "msi": (0x1001, 0x1991, "io", 0x3),
    "msix": (0x1002, 0x1991, "io mem32", 0x3),
    "dma-intx": (0x0309, 0x1989, "io", 0x3),
    "dma-msi": (0x1024, 0x1991, "io", 0x3),
    "dma-msix": (0x1026, 0x1991, "io mem32", 0x3),
    "dma-buf": (0x1004, 0x1991, "io mem32", 0x3),
}


def test_identities_bars_and_interrupt_kinds() -> None:
    rig = Rig()
    devices = build_all(rig, FakeScheduler())
    for slot, (key, fn) in enumerate(devices.items(), start=1):
        vendor, device, kinds, command = IDS[key]
        assert rig.cfg_read(slot, 0) == device << 16 | vendor, key
        assert rig.cfg_read(slot, 8) == 0 and rig.cfg_read(slot, 0x2C) == 0
        assert rig.cfg_read(slot, 4, 2) == command, key
        assert " ".join(b.kind.value for b in fn.bars.values()) == kinds
        assert all(b.size == 0x100 for b in fn.bars.values())
        pin = rig.cfg_read(slot, 0x3D, 1)
        caps = [cap for _, cap in fn.config.capabilities()]
        if key in ("async-pio", "async-mmio", "intx", "dma-intx"):
            assert pin == 1 and caps == [] and rig.cfg_read(slot, 0x3C, 1) == fn.intx.gsi  # type: ignore[union-attr]
        elif key in ("msi", "dma-msi"):
            assert pin == 0 and caps == [0x05] and fn.config.get(0x40, 4) == 0x05
        elif key in ("msix", "dma-msix", "dma-buf"):
            assert pin == 0 and caps == [0x11]
            assert rig.cfg_read(slot, 0x40) == 0x11  # 1 entry
            assert (rig.cfg_read(slot, 0x44), rig.cfg_read(slot, 0x48)) == (1, 0x81)  # BAR1+0, BAR1+0x80
        else:
            assert pin == 0 and caps == []
    # BARs were handed out in add order from the seed's windows.
    assert devices["sync-pio"].bars[0].mapped == 0x6200
    assert devices["sync-mmio"].bars[0].mapped == 0xC200_0000
    assert devices["base"].bars[1].mapped == 0xC200_0100


# -- sync devices ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [demos.SyncPioPci, demos.SyncMmioPci])
def test_sync_devices_driver_flow(make: Callable[[], PciFunction]) -> None:
    rig = Rig()
    fn = make()
    rig.host.add(fn)
    bar = fn.bars[0]
    bus = rig.bus_for(bar.kind.is_io)
    base = bar.mapped
    assert base is not None
    assert bus.read(base, 4) == 0x20
    bus.write(base + 4, 4, 2)
    assert bus.read(base + 4, 4) == 2
    assert (bus.read(base + 8, 4), bus.read(base + 0xC, 4)) == (0x10, 0x40)
    bus.write(base + 8, 4, 0x99)  # read-only
    assert bus.read(base + 8, 4) == 0x10
    assert bus.read(base + 0x40, 4) == 0xFFFF_FFFF  # beyond the block inside the BAR


def test_pci_base_mirrors_one_block_in_both_bars() -> None:
    rig = Rig()
    fn = demos.PciBaseDemo()
    rig.host.add(fn)
    io, mem = fn.bars[0].mapped, fn.bars[1].mapped
    assert io is not None and mem is not None
    rig.pio.write(io + 4, 4, 7)
    assert rig.mmio.read(mem + 4, 4) == 7


# -- doorbell devices --------------------------------------------------------------------------
def test_async_pio_doorbell_intx_and_ack() -> None:
    rig, sched, line = Rig(), FakeScheduler(), FakeIrqLine(8)
    fn = demos.AsyncPioPci(irq=line, schedule=sched)
    rig.host.add(fn)
    base = fn.bars[0].mapped
    assert base is not None
    assert rig.guest_write(True, base + 0x10, 4, 1)  # caught by the ioeventfd
    assert sched.delays == [2.0] and rig.pio.read(base + 0x14, 4) == demos.STATUS_BUSY
    assert line.level == 0
    sched.run()
    assert line.history == [1] and fn.completions == 1
    assert rig.pio.read(base + 0x14, 4) == demos.STATUS_DONE
    assert rig.pio.read(base + 0x18, 4) == 1
    assert rig.cfg_read(1, 6, 2) & 0x08  # status: interrupt pending
    rig.pio.write(base + 0x14, 4, demos.STATUS_DONE)  # ACK
    assert line.history == [1, 0] and rig.pio.read(base + 0x14, 4) == 0
    assert not rig.cfg_read(1, 6, 2) & 0x08
    # A write the ioeventfd does not catch (other width) still rings, through the bus.
    assert not rig.guest_write(True, base + 0x10, 1, 1)
    sched.run()
    assert fn.completions == 2 and line.history == [1, 0, 1]
    assert fn.guest_errors == fn.registers.guest_errors == 0


def test_async_mmio_doorbell_and_busy_ring() -> None:
    rig, sched, line = Rig(), FakeScheduler(), FakeIrqLine(9)
    fn = demos.AsyncMmioPci(irq=line, schedule=sched)
    rig.host.add(fn)
    base = fn.bars[0].mapped
    assert base == 0xC200_0000
    assert rig.doorbells is not None and rig.doorbells.at(False, base + 0x10)[0].length == 4
    rig.guest_write(False, base + 0x10, 4, 0)
    for _ in range(3):
        rig.guest_write(False, base + 0x10, 4, 0)  # while busy: coalesced, nothing scheduled
    assert fn.busy_rings == 3 and len(sched.pending) == 1
    sched.pending.pop(0)[1]()
    assert fn.completions == 1 and line.level == 1 and len(sched.pending) == 1  # one more job, not three
    assert rig.mmio.read(base + 0x14, 4) == demos.STATUS_DONE | demos.STATUS_BUSY
    sched.run()
    assert fn.completions == 2 and fn.rings == 4 and sched.delays == [2.0, 2.0]


@pytest.mark.parametrize(
    ("make", "width", "delay"),
    [
        (lambda s, l: demos.AsyncPioPci(irq=l, schedule=s), 4, 2.0),
        (lambda s, l: demos.IntxDemoPci(irq=l, schedule=s), 2, 5.0),
        (lambda s, l: demos.IntxDemoPci(irq=l, schedule=s, delay=0), 2, 0),
    ],
)
def test_doorbell_widths_and_delays(
    make: Callable[[FakeScheduler, FakeIrqLine], demos.DoorbellDemo], width: int, delay: float
) -> None:
    rig, sched = Rig(), FakeScheduler(immediate=True)
    fn = make(sched, FakeIrqLine(5))
    rig.host.add(fn)
    assert rig.doorbells is not None and rig.doorbells.handles[0].length == width
    assert rig.guest_write(True, 0x6210, width, 1)
    assert sched.delays == [delay] and fn.completions == 1


def test_msi_demo() -> None:
    rig, sched, sink = Rig(), FakeScheduler(immediate=True), FakeMsiSink()
    fn = demos.MsiDemoPci(msi_sink=sink, schedule=sched)
    rig.host.add(fn)
    rig.guest_write(True, 0x6210, 2, 1)
    assert fn.completions == 1 and sink.messages == []  # MSI not enabled yet
    rig.cfg_write(1, 0x44, 4, 0xFEE0_0000)
    rig.cfg_write(1, 0x48, 2, 0x0041)
    rig.cfg_write(1, 0x42, 2, 1)
    rig.guest_write(True, 0x6210, 2, 1)
    assert sink.messages == [(0xFEE0_0000, 0x41)] and fn.completions == 2
    assert rig.pio.read(0x6214, 4) == demos.STATUS_DONE


def test_msi_demo_with_masking() -> None:
    rig, sched, sink = Rig(), FakeScheduler(immediate=True), FakeMsiSink()
    fn = demos.MsiDemoPci(msi_sink=sink, schedule=sched, is64=True, per_vector_mask=True)
    rig.host.add(fn)
    rig.cfg_write(1, 0x44, 4, 0xFEE0_0000)
    rig.cfg_write(1, 0x4C, 2, 0x22)
    rig.cfg_write(1, 0x50, 4, 1)
    rig.cfg_write(1, 0x42, 2, 1)
    rig.guest_write(True, 0x6210, 2, 1)
    assert sink.messages == [] and rig.cfg_read(1, 0x54) == 1
    rig.cfg_write(1, 0x50, 4, 0)
    assert sink.messages == [(0xFEE0_0000, 0x22)] and rig.cfg_read(1, 0x54) == 0


def test_msix_demo_pending_until_unmasked() -> None:
    rig, sched, sink = Rig(), FakeScheduler(immediate=True), FakeMsiSink()
    fn = demos.MsixDemoPci(msi_sink=sink, schedule=sched)
    rig.host.add(fn)
    table = fn.bars[1].mapped
    assert table == 0xC200_0000
    rig.cfg_write(1, 0x42, 2, 0x8000)  # enable; entry 0 still masked
    rig.mmio.write(table, 4, 0xFEE0_1000)
    rig.mmio.write(table + 8, 4, 0x61)
    rig.guest_write(True, 0x6210, 2, 1)
    assert sink.messages == [] and rig.mmio.read(table + 0x80, 8) == 1
    rig.mmio.write(table + 12, 4, 0)
    assert sink.messages == [(0xFEE0_1000, 0x61)] and rig.mmio.read(table + 0x80, 8) == 0
    rig.guest_write(True, 0x6210, 2, 1)
    assert len(sink.messages) == 2 and fn.completions == 2
    assert rig.mmio.read(table + 0x40, 4) == 0xFFFF_FFFF  # unused part of BAR1


def test_doorbell_follows_a_moved_bar() -> None:
    rig, sched, line = Rig(), FakeScheduler(immediate=True), FakeIrqLine(5)
    fn = demos.IntxDemoPci(irq=line, schedule=sched)
    rig.host.add(fn)
    rig.cfg_write(1, 0x10, 4, 0x9000)
    assert rig.doorbells is not None and [h.addr for h in rig.doorbells.handles] == [0x9010]
    assert not rig.guest_write(True, 0x6210, 2, 1) and fn.completions == 0
    assert rig.guest_write(True, 0x9010, 2, 1) and fn.completions == 1


def test_without_doorbells_writes_ring_through_the_bus() -> None:
    rig, sched, line = Rig(doorbells=False), FakeScheduler(immediate=True), FakeIrqLine(5)
    fn = demos.AsyncPioPci(irq=line, schedule=sched)
    rig.host.add(fn)
    rig.pio.write(0x6210, 4, 1)
    assert fn.completions == 1 and line.level == 1


def test_register_block_hostile_accesses() -> None:
    rig, sched, line = Rig(), FakeScheduler(), FakeIrqLine(5)
    fn = demos.AsyncPioPci(irq=line, schedule=sched)
    rig.host.add(fn)
    assert rig.pio.read(0x6200, 4) == 0xFFFF_FFFF  # nothing below +0x10
    assert rig.pio.read(0x6214, 2) == 0xFFFF  # STATUS is a dword
    assert rig.pio.read(0x6210, 2) == 0
    rig.pio.write(0x6218, 4, 5)  # COMPLETIONS is read-only
    rig.pio.write(0x6214, 1, 1)
    rig.pio.write(0x62F0, 4, 1)
    assert rig.pio.read(0x6218, 4) == 0 and fn.completions == 0
    assert fn.registers.guest_errors == 5


# -- DMA ---------------------------------------------------------------------------------------
DmaMaker = Callable[[GuestMemory, FakeScheduler], dma.DmaDemo]
DMA_DEVICES: dict[str, DmaMaker] = {
    "intx": lambda m, s: dma.DmaIntxPci(memory=m, irq=FakeIrqLine(7), schedule=s),
    "msi": lambda m, s: dma.DmaMsiPci(memory=m, msi_sink=FakeMsiSink(), schedule=s),
    "msix": lambda m, s: dma.DmaMsixPci(memory=m, msi_sink=FakeMsiSink(), schedule=s),
    "buf": lambda m, s: dma.DmaBufPci(memory=m, msi_sink=FakeMsiSink(), schedule=s),
}


class DmaRig:
    def __init__(self, key: str) -> None:
        self.rig = Rig()
        self.mem = memory()
        self.sched = FakeScheduler()
        self.dev = DMA_DEVICES[key](self.mem, self.sched)
        self.sink = FakeMsiSink()
        if self.dev.msi is not None:
            self.dev.msi.sink = self.sink
        if self.dev.msix is not None:
            self.dev.msix.sink = self.sink
        self.rig.host.add(self.dev)
        self.base = self.dev.bars[0].mapped or 0
        self.enable_interrupts()

    def enable_interrupts(self) -> None:
        rig = self.rig
        if self.dev.msi is not None:
            rig.cfg_write(1, 0x44, 4, 0xFEE0_0000)
            rig.cfg_write(1, 0x48, 2, 0x45)
            rig.cfg_write(1, 0x42, 2, 1)
        if self.dev.msix is not None:
            table = self.dev.bars[1].mapped or 0
            rig.mmio.write(table, 4, 0xFEE0_0000)
            rig.mmio.write(table + 8, 4, 0x46)
            rig.mmio.write(table + 12, 4, 0)
            rig.cfg_write(1, 0x42, 2, 0x8000)

    def run(self, src: int, dst: int, direction: int, length: int) -> int:
        pio = self.rig.pio
        for reg, value in ((0, src), (4, dst), (8, direction), (0xC, length)):
            pio.write(self.base + reg, 4, value)
        assert self.rig.guest_write(True, self.base + 0x10, 2, 1)
        assert pio.read(self.base + 0x14, 4) & demos.STATUS_BUSY
        self.sched.run()
        return pio.read(self.base + 0x14, 4)

    def interrupts(self) -> int:
        if isinstance(self.dev.intx, FakeIrqLine):
            return self.dev.intx.raises
        return len(self.sink.messages)

    def ack(self) -> None:
        self.rig.pio.write(self.base + 0x14, 4, 0x3)


@pytest.mark.parametrize("key", DMA_DEVICES)
def test_dma_both_ways(key: str) -> None:
    d = DmaRig(key)
    if key != "buf":
        assert bytes(d.dev.buffer[:8]) == b"Weclome "
        assert d.run(0, 0x1000, dma.DIR_TO_RAM, len(dma.BROILER_DMA_TEXT) + 1) == demos.STATUS_DONE
        assert d.mem.read(0x1000, len(dma.BROILER_DMA_TEXT) + 1) == dma.BROILER_DMA_TEXT + b"\0"
        assert d.interrupts() == 1
        d.ack()
    pattern = bytes(range(256)) * 4
    d.mem.write(0x20_0000, pattern)
    assert d.run(0x20_0000, 0x200, dma.DIR_FROM_RAM, len(pattern)) == demos.STATUS_DONE
    assert bytes(d.dev.buffer[0x200:0x600]) == pattern
    d.ack()
    assert d.run(0x200, RAM - len(pattern), dma.DIR_TO_RAM, len(pattern)) == demos.STATUS_DONE
    assert d.mem.read(RAM - len(pattern), len(pattern)) == pattern
    assert d.rig.pio.read(d.base + 0x18, 4) == d.dev.completions == (3 if key != "buf" else 2)
    assert d.interrupts() == d.dev.completions
    assert d.rig.pio.read(d.base + 0x1C, 4) == 0
    expected = 0.0 if key == "buf" else 5.0
    assert set(d.sched.delays) == {expected}


def test_dma_registers_read_back() -> None:
    d = DmaRig("intx")
    for reg, value in ((0, 0x1234), (4, 0xFFFF_FFFF), (8, 1), (0xC, 0x10)):
        d.rig.pio.write(d.base + reg, 4, value)
        assert d.rig.pio.read(d.base + reg, 4) == value
    d.rig.pio.write(d.base + 0, 2, 0)  # registers are dwords
    assert d.rig.pio.read(d.base + 0, 4) == 0x1234 and d.dev.registers.guest_errors == 1


BAD_DMA = [
    ("to RAM outside RAM", 0, 0xC000_0000, 0, 16, dma.ERR_RAM_RANGE),
    ("to RAM crossing its end", 0, RAM - 8, 0, 16, dma.ERR_RAM_RANGE),
    ("to RAM at the top of the 32-bit space", 0, 0xFFFF_FFF0, 0, 16, dma.ERR_RAM_RANGE),
    ("from RAM outside RAM", 0xD000_0000, 0, 1, 16, dma.ERR_RAM_RANGE),
    ("from RAM crossing its end", RAM - 1, 0, 1, 2, dma.ERR_RAM_RANGE),
    ("huge length", 0, 0x1000, 0, 0xFFFF_FFFF, dma.ERR_DEVICE_RANGE),
    ("huge length from RAM", 0x1000, 0, 1, 0x8000_0000, dma.ERR_DEVICE_RANGE),
    ("bad direction", 0, 0x1000, 2, 16, dma.ERR_BAD_DIR),
    ("bad direction all ones", 0, 0x1000, 0xFFFF_FFFF, 16, dma.ERR_BAD_DIR),
    ("past the device buffer (source)", 4090, 0x1000, 0, 16, dma.ERR_DEVICE_RANGE),
    ("past the device buffer (destination)", 0x1000, 4095, 1, 2, dma.ERR_DEVICE_RANGE),
    ("device offset far out", 0xFFFF_FFF0, 0x1000, 0, 0x20, dma.ERR_DEVICE_RANGE),
]


@pytest.mark.parametrize(("what", "src", "dst", "direction", "length", "code"), BAD_DMA, ids=[b[0] for b in BAD_DMA])
@pytest.mark.parametrize("key", ["intx", "msix"])
def test_bad_dma_is_an_error_status(
    key: str, what: str, src: int, dst: int, direction: int, length: int, code: int
) -> None:
    d = DmaRig(key)
    d.mem.fill(RAM - 0x2000, 0x2000, 0xA5)
    d.mem.fill(0, 0x2000, 0x5A)
    before_buf = bytes(d.dev.buffer)
    status = d.run(src, dst, direction, length)
    assert status == demos.STATUS_DONE | demos.STATUS_ERROR
    assert d.rig.pio.read(d.base + 0x1C, 4) == code
    assert d.interrupts() == 1  # the driver still hears about it
    assert bytes(d.dev.buffer) == before_buf
    assert d.mem.read(RAM - 0x2000, 0x2000) == b"\xa5" * 0x2000
    assert d.mem.read(0, 0x2000) == b"\x5a" * 0x2000
    assert d.dev.bytes_copied == 0
    d.ack()
    assert d.rig.pio.read(d.base + 0x14, 4) == 0
    assert d.run(0, 0x1000, 0, 4) == demos.STATUS_DONE  # the device still works
    assert d.rig.pio.read(d.base + 0x1C, 4) == 0


def test_dma_buf_big_buffer() -> None:
    d = DmaRig("buf")
    assert len(d.dev.buffer) == 1 << 20 and not any(d.dev.buffer[:64])
    d.mem.write(0x3000, b"xyz")
    assert d.run(0x3000, (1 << 20) - 3, 1, 3) == demos.STATUS_DONE
    assert d.run((1 << 20) - 3, 0x5000, 0, 3) == demos.STATUS_DONE
    assert d.mem.read(0x5000, 3) == b"xyz"
    assert d.interrupts() == 2  # both directions interrupt
    assert d.run((1 << 20) - 3, 0x5000, 0, 4) & demos.STATUS_ERROR


def test_dma_zero_length_is_fine() -> None:
    d = DmaRig("intx")
    assert d.run(0xFFFF_0000, 0xFFFF_0000, 0, 0) == demos.STATUS_DONE
    assert d.dev.bytes_copied == 0
