"""Virtio functions on the PCI host: IDs per transport kind, the vendor capabilities a driver walks,
doorbells that follow a BAR move, INTx and MSI-X delivery. Fake buses and doorbells; no KVM."""

from __future__ import annotations

import pytest

from broiler.core.irq import MsiMessage
from broiler.devices.virtio import legacy, modern
from broiler.devices.virtio.pci import MODERN_BAR, TransportKind, VirtioPci
from broiler.devices.virtio.rng import VirtioRng
from broiler.devices.virtio.spec import (
    F_VERSION_1,
    PCI_CAP_COMMON_CFG,
    PCI_CAP_DEVICE_CFG,
    PCI_CAP_ISR_CFG,
    PCI_CAP_NOTIFY_CFG,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
)
from tests.unit.fakes import FakeIrqLine, FakeMsiSink
from tests.unit.pci_fakes import Rig
from tests.unit.virtio_driver import AVAIL_AT, DESC_AT, USED_AT, Buf, Driver, guest_ram


def add(kind: TransportKind) -> tuple[Rig, VirtioPci, FakeIrqLine, FakeMsiSink]:
    rig, line, sink = Rig(), FakeIrqLine(gsi=20), FakeMsiSink()
    fn = VirtioPci(VirtioRng(lambda n: b"\x5a" * n), memory=guest_ram(), msi_sink=sink, intx=line, kind=kind)
    rig.host.add(fn)
    return rig, fn, line, sink


@pytest.mark.parametrize(
    "kind, device_id, revision, subsystem, bars",
    [
        (TransportKind.TRANSITIONAL, 0x1005, 0, 4, {0, 1, 4}),
        (TransportKind.LEGACY, 0x1005, 0, 4, {0, 1}),
        (TransportKind.MODERN, 0x1044, 1, 0x1100, {1, 4}),
    ],
)
def test_ids_and_bars(kind: TransportKind, device_id: int, revision: int, subsystem: int, bars: set[int]) -> None:
    _, fn, _, _ = add(kind)
    assert fn.read(0, 4) == device_id << 16 | 0x1AF4
    assert fn.read(8, 1) == revision and fn.read(0x2E, 2) == subsystem
    assert set(fn.bars) == bars


def test_vendor_capabilities_describe_the_modern_bar() -> None:
    _, fn, _, _ = add(TransportKind.TRANSITIONAL)
    caps = {}
    for at, cap_id in fn.config.capabilities():
        if cap_id == 0x09:
            caps[fn.read(at + 3, 1)] = (fn.read(at + 4, 1), fn.read(at + 8, 4), fn.read(at + 12, 4), at)
    assert set(caps) == {PCI_CAP_COMMON_CFG, PCI_CAP_NOTIFY_CFG, PCI_CAP_ISR_CFG, PCI_CAP_DEVICE_CFG}
    assert all(bar == MODERN_BAR for bar, _, _, _ in caps.values())
    assert caps[PCI_CAP_COMMON_CFG][1:3] == (modern.COMMON_OFFSET, modern.COMMON_LENGTH)
    notify_at = caps[PCI_CAP_NOTIFY_CFG][3]
    assert fn.read(notify_at + 2, 1) == 20 and fn.read(notify_at + 16, 4) == modern.NOTIFY_MULTIPLIER


def start_modern(rig: Rig, fn: VirtioPci, base: int) -> Driver:
    mem = rig.mmio
    mem.write(base + 0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    mem.write(base + 0x08, 4, 1)
    mem.write(base + 0x0C, 4, 1 << (F_VERSION_1 - 32))
    mem.write(base + 0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    drv = Driver(fn.transport.memory, fn.transport.queues[0], 8)  # type: ignore[arg-type]
    mem.write(base + 0x18, 2, 8)
    for off, addr in ((0x20, DESC_AT), (0x28, AVAIL_AT), (0x30, USED_AT)):
        mem.write(base + off, 4, addr)
    mem.write(base + 0x1C, 2, 1)
    mem.write(base + 0x14, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    return drv


def test_modern_doorbell_follows_the_bar_and_intx_fires() -> None:
    rig, fn, line, _ = add(TransportKind.TRANSITIONAL)
    base = fn.bars[MODERN_BAR].mapped
    assert base is not None
    drv = start_modern(rig, fn, base)
    assert rig.doorbells is not None
    drv.add([Buf(length=8, writable=True)])
    assert rig.doorbells.guest_write(rig.mmio, base + modern.notify_offset(0), 2, 0)  # caught by the doorbell
    assert drv.used() == [(0, 8)] and line.level == 1
    assert rig.mmio.read(base + modern.ISR_OFFSET, 1) == 1 and line.level == 0
    # The guest moves BAR4: the doorbell moves with it, the old address is dead.
    new = base + 0x10000
    rig.cfg_write(fn.slot, 0x10 + 4 * MODERN_BAR, 4, new)  # type: ignore[arg-type]
    assert not rig.doorbells.at(False, base + modern.notify_offset(0))
    assert rig.doorbells.at(False, new + modern.notify_offset(0))
    drv.add([Buf(length=8, writable=True)])
    assert rig.doorbells.guest_write(rig.mmio, new + modern.notify_offset(0), 2, 0)
    assert len(drv.used()) == 1 and fn.stats()["kicks"] == 2


def test_legacy_doorbell_has_datamatch_per_queue() -> None:
    rig, fn, _, _ = add(TransportKind.LEGACY)
    io = fn.bars[0].mapped
    assert io is not None and rig.doorbells is not None
    (bell,) = rig.doorbells.at(True, io + legacy.QUEUE_NOTIFY)
    assert bell.datamatch == 0 and bell.length == 2


def test_msix_vectors_deliver_messages() -> None:
    rig, fn, line, sink = add(TransportKind.MODERN)
    assert fn.msix is not None and fn.msix.vectors == 2
    base = fn.bars[MODERN_BAR].mapped
    assert base is not None
    table = fn.bars[1].mapped
    assert table is not None
    rig.mmio.write(table + 16, 4, 0xFEE0_0000)  # entry 1: address, data, unmasked
    rig.mmio.write(table + 24, 4, 0x41)
    rig.mmio.write(table + 28, 4, 0)
    msix_ctrl = fn.msix.offset + 2
    rig.cfg_write(fn.slot, msix_ctrl, 2, 0x8000)  # type: ignore[arg-type]
    drv = start_modern(rig, fn, base)
    rig.mmio.write(base + 0x16, 2, 0)
    rig.mmio.write(base + 0x1A, 2, 1)  # queue 0 -> vector 1
    drv.add([Buf(length=4, writable=True)])
    rig.mmio.write(base + modern.notify_offset(0), 2, 0)  # a trapped write rings the same handler
    assert sink.messages == [MsiMessage(0xFEE0_0000, 0x41)] and line.level == 0
