"""virtio-pci register files over the transport state machine: feature negotiation, status rules,
queue setup through the modern and legacy registers, interrupts (INTx + ISR, MSI-X vectors), reset,
kicks before DRIVER_OK, and the entropy device end to end. No KVM."""

from __future__ import annotations

import pytest

from broiler.devices.virtio import legacy, modern
from broiler.devices.virtio.rng import MAX_BYTES_PER_REQUEST, VirtioRng
from broiler.devices.virtio.spec import (
    F_RING_EVENT_IDX,
    F_VERSION_1,
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
)
from broiler.devices.virtio.transport import VirtioTransport
from tests.unit.virtio_driver import AVAIL_AT, DESC_AT, USED_AT, Buf, Driver, guest_ram

ACK_DRIVER = STATUS_ACKNOWLEDGE | STATUS_DRIVER


class FakePins:
    def __init__(self, msix_vectors: int = 0) -> None:
        self.vectors = msix_vectors
        self.msix_on = False
        self.sent: list[int] = []
        self.intx = False
        self.intx_raised = 0

    def msix_enabled(self) -> bool:
        return self.msix_on

    def msix_vectors(self) -> int:
        return self.vectors

    def msix_notify(self, vector: int) -> None:
        self.sent.append(vector)

    def set_intx_level(self, level: bool) -> None:
        self.intx_raised += int(level and not self.intx)
        self.intx = level


def rig(*, modern_ok: bool = True, vectors: int = 2, source=lambda n: bytes(range(256)) * (n // 256 + 1)):
    mem = guest_ram()
    dev = VirtioRng(lambda n: source(n)[:n])
    pins = FakePins(vectors)
    t = VirtioTransport(dev, mem, pins, modern=modern_ok)
    return mem, dev, pins, t, modern.ModernRegisters(t), legacy.LegacyRegisters(t)


def modern_setup(regs: modern.ModernRegisters, features: int) -> None:
    regs.write(0x14, 1, 0)
    regs.write(0x14, 1, ACK_DRIVER)
    regs.write(0x08, 4, 0)
    regs.write(0x0C, 4, features & 0xFFFF_FFFF)
    regs.write(0x08, 4, 1)
    regs.write(0x0C, 4, features >> 32)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK)


def modern_queue(regs: modern.ModernRegisters, size: int = 8) -> None:
    regs.write(0x16, 2, 0)
    regs.write(0x18, 2, size)
    for off, addr in ((0x20, DESC_AT), (0x28, AVAIL_AT), (0x30, USED_AT)):
        regs.write(off, 4, addr)
        regs.write(off + 4, 4, 0)
    regs.write(0x1C, 2, 1)


def test_modern_ids_and_feature_words() -> None:
    _, _, _, t, regs, _ = rig()
    regs.write(0x00, 4, 1)
    assert regs.read(0x04, 4) & 1 << (F_VERSION_1 - 32)
    regs.write(0x00, 4, 0)
    assert regs.read(0x04, 4) & 1 << F_RING_EVENT_IDX
    assert regs.read(0x12, 2) == 1  # num_queues
    regs.write(0x16, 2, 5)
    assert regs.read(0x18, 2) == 0  # a queue that does not exist has size 0


def test_features_ok_refused_without_version_1_or_with_unknown_bits() -> None:
    _, _, _, t, regs, _ = rig()
    modern_setup(regs, 1 << F_RING_EVENT_IDX)  # no VERSION_1
    assert not regs.read(0x14, 1) & STATUS_FEATURES_OK
    modern_setup(regs, 1 << F_VERSION_1 | 1 << 3)  # bit 3 was never offered
    assert not regs.read(0x14, 1) & STATUS_FEATURES_OK
    modern_setup(regs, 1 << F_VERSION_1)
    assert regs.read(0x14, 1) & STATUS_FEATURES_OK
    assert t.guest_errors == 2


def test_driver_ok_without_features_ok_needs_reset() -> None:
    _, _, pins, t, regs, _ = rig()
    regs.write(0x14, 1, ACK_DRIVER)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_DRIVER_OK)
    assert regs.read(0x14, 1) & STATUS_DEVICE_NEEDS_RESET
    assert regs.read(0x1000, 1) == 2  # config interrupt in the ISR
    assert not pins.intx  # reading the ISR lowered INTx


def test_rng_end_to_end_modern_intx() -> None:
    mem, dev, pins, t, regs, _ = rig()
    drv = Driver(mem, t.queues[0], 8)
    modern_setup(regs, 1 << F_VERSION_1)
    modern_queue(regs)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    head, addrs = drv.add([Buf(length=16, writable=True)])
    regs.write(modern.notify_offset(0), 2, 0)
    assert drv.used() == [(head, 16)]
    assert mem.read(addrs[0], 16) == bytes(range(16))
    assert pins.intx and regs.read(0x1000, 1) == 1 and not pins.intx
    assert dev.stats.kicks == 1 and dev.stats.requests == 1 and dev.stats.bytes_read == 16


def test_rng_bounds_each_request() -> None:
    mem, dev, pins, t, regs, _ = rig()
    drv = Driver(mem, t.queues[0], 8)
    modern_setup(regs, 1 << F_VERSION_1)
    modern_queue(regs)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    head, _ = drv.add([Buf(length=2 * 1024 * 1024, writable=True)])
    t.notify(0)
    assert drv.used() == [(head, MAX_BYTES_PER_REQUEST)]


def test_kick_before_driver_ok_is_ignored() -> None:
    mem, dev, _, t, regs, _ = rig()
    drv = Driver(mem, t.queues[0], 8)
    modern_setup(regs, 1 << F_VERSION_1)
    modern_queue(regs)
    drv.add([Buf(length=4, writable=True)])
    regs.write(modern.notify_offset(0), 2, 0)
    t.notify(7)  # no such queue
    assert drv.used() == [] and t.ignored_kicks == 2 and dev.stats.kicks == 0


def test_bad_queue_size_sets_needs_reset_at_driver_ok() -> None:
    _, _, _, t, regs, _ = rig()
    modern_setup(regs, 1 << F_VERSION_1)
    modern_queue(regs, size=6)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    assert regs.read(0x14, 1) & STATUS_DEVICE_NEEDS_RESET
    assert "power of two" in (t.needs_reset_reason or "")
    regs.write(0x14, 1, 0)  # reset clears it
    assert regs.read(0x14, 1) == 0 and t.needs_reset_reason is None


def test_hostile_chain_sets_needs_reset_and_msix_config_vector() -> None:
    mem, dev, pins, t, regs, _ = rig()
    pins.msix_on = True
    drv = Driver(mem, t.queues[0], 8)
    modern_setup(regs, 1 << F_VERSION_1)
    regs.write(0x10, 2, 1)  # config vector 1
    modern_queue(regs)
    regs.write(0x1A, 2, 0)  # queue vector 0
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    drv.add([Buf(length=4, writable=True)])
    t.notify(0)
    assert pins.sent == [0]
    drv.write_desc(DESC_AT, 1, 0x100000, 4, 1, 1)  # a descriptor that chains to itself
    drv.publish(1)
    t.notify(0)
    assert regs.read(0x14, 1) & STATUS_DEVICE_NEEDS_RESET and pins.sent == [0, 1]
    t.notify(0)  # ignored from now on
    assert t.ignored_kicks == 1


def test_msix_vector_out_of_range_reads_no_vector() -> None:
    _, _, _, _, regs, _ = rig(vectors=2)
    regs.write(0x10, 2, 5)
    assert regs.read(0x10, 2) == 0xFFFF


def test_status_bits_cannot_be_cleared_and_odd_widths_are_errors() -> None:
    _, _, _, t, regs, _ = rig()
    regs.write(0x14, 1, ACK_DRIVER)
    regs.write(0x14, 1, STATUS_ACKNOWLEDGE)
    assert regs.read(0x14, 1) == ACK_DRIVER
    regs.write(0x14, 2, 0)  # wrong width
    assert regs.read(0x14, 1) == ACK_DRIVER and regs.read(0x15, 2) == 0
    assert regs.guest_errors == 2 and t.guest_errors == 1


def test_legacy_interface_end_to_end() -> None:
    mem, dev, pins, t, _, regs = rig(modern_ok=False)
    assert regs.read(legacy.HOST_FEATURES, 4) & 1 << F_RING_EVENT_IDX
    regs.write(legacy.STATUS, 1, 0)
    regs.write(legacy.STATUS, 1, ACK_DRIVER)
    regs.write(legacy.GUEST_FEATURES, 4, 0xFFFF_FFFF)  # unknown bits are dropped
    assert regs.read(legacy.GUEST_FEATURES, 4) == t.offered & 0xFFFF_FFFF
    regs.write(legacy.GUEST_FEATURES, 4, 0)
    regs.write(legacy.QUEUE_SELECT, 2, 0)
    assert regs.read(legacy.QUEUE_SIZE, 2) == 256
    q = t.queues[0]
    regs.write(legacy.QUEUE_PFN, 4, 0x40)  # rings at 0x40000
    assert (q.desc, q.avail, q.used) == (0x40000, 0x41000, 0x42000)  # used ring on the next 4 KiB page
    assert regs.read(legacy.QUEUE_PFN, 4) == 0x40
    regs.write(legacy.STATUS, 1, ACK_DRIVER | STATUS_DRIVER_OK)
    assert regs.read(legacy.STATUS, 1) == ACK_DRIVER | STATUS_DRIVER_OK  # the status, not the ISR
    # One 8-byte writable descriptor at index 0, made available at avail.ring[0].
    mem.write(0x40000, (0x100000).to_bytes(8, "little") + (8).to_bytes(4, "little") + (2).to_bytes(2, "little"))
    mem.write_int(0x41004, 2, 0)
    mem.write_int(0x41002, 2, 1)
    regs.write(legacy.QUEUE_NOTIFY, 2, 0)
    assert mem.read_int(0x42002, 2) == 1 and mem.read_int(0x42008, 4) == 8  # used idx and len
    assert regs.read(legacy.ISR, 1) == 1 and regs.read(legacy.ISR, 1) == 0
    assert regs.read(legacy.CONFIG_NO_MSIX, 1) == 0 and t.guest_errors == 1  # rng has no config bytes


@pytest.mark.parametrize("msix", [False, True])
def test_legacy_config_offset_moves_with_msix(msix: bool) -> None:
    _, _, pins, t, _, regs = rig()
    pins.msix_on = msix
    regs.write(legacy.CONFIG_VECTOR, 2, 1)
    assert (t.config_vector == 1) is msix


def test_reset_stops_device_and_forgets_queues() -> None:
    mem, dev, pins, t, regs, _ = rig()
    drv = Driver(mem, t.queues[0], 8)
    modern_setup(regs, 1 << F_VERSION_1)
    modern_queue(regs)
    regs.write(0x14, 1, ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    regs.write(0x14, 1, 0)
    assert not t.queues[0].active and t.queues[0].desc == 0 and t.status == 0 and t.resets == 2
    drv.add([Buf(length=4, writable=True)])
    t.notify(0)
    assert drv.used() == []
