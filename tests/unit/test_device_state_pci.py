"""Device snapshot state of PCI functions (config space, moved BARs and their doorbells, MSI/MSI-X, INTx,
DMA), virtio (transport, queues, a request made available just before the snapshot) and of a whole
platform's device set (save_devices/restore_devices on the KVM-less PlatformSketch). No KVM."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import pytest

from broiler.core.irq import MsiMessage
from broiler.core.memory import GuestMemory, MemoryMap
from broiler.devices.demo.pci_demos import IntxDemoPci, MsiDemoPci, MsixDemoPci
from broiler.devices.demo.pci_dma import DmaMsixPci
from broiler.devices.testdev.pci_testdev import PciTestDev
from broiler.devices.virtio import modern
from broiler.devices.virtio.block.request import T_IN
from broiler.devices.virtio.pci import MODERN_BAR, TransportKind, VirtioPci
from broiler.devices.virtio.rng import VirtioRng
from broiler.errors import SnapshotError
from broiler.vmm.config import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.snapshot.devices import device_table, restore_devices, save_devices
from tests.unit.fakes import FakeIrqLine, FakeMsiSink, FakeScheduler
from tests.unit.pci_fakes import Rig
from tests.unit.test_device_state import through_file
from tests.unit.test_virtio_block import Rig as BlockRig
from tests.unit.test_virtio_block import image
from tests.unit.test_virtio_console import Sink
from tests.unit.test_virtio_console import rig as console_rig
from tests.unit.test_virtio_pci import start_modern
from tests.unit.virtio_driver import RAM, Buf

NEW_IO = 0x7000  # inside the IO window, away from where the allocator put anything


def msix_demo(rig: Rig, sink: FakeMsiSink, sched: FakeScheduler) -> MsixDemoPci:
    fn = MsixDemoPci(msi_sink=sink, schedule=sched, delay=0.01)
    rig.host.add(fn)
    return fn


def test_msix_function_moved_bar_doorbell_table_and_pending_bit() -> None:
    rig, sink, sched = Rig(), FakeMsiSink(), FakeScheduler()
    old = msix_demo(rig, sink, sched)
    slot, table = old.slot, old.bars[1].mapped
    assert slot is not None and table is not None and old.msix is not None
    rig.cfg_write(slot, 0x10, 4, NEW_IO)  # the guest moves BAR0 (IO, with the doorbell)
    rig.mmio.write(table, 8, 0xFEE0_0000)
    rig.mmio.write(table + 8, 4, 0x31)  # entry 0: data 0x31, still masked
    rig.cfg_write(slot, old.msix.offset + 2, 2, 0x8000)  # MSI-X on
    assert rig.guest_write(True, NEW_IO + 0x10, 2, 1)  # the doorbell at its new place
    sched.run()
    assert old.msix.is_pending(0) and sink.messages == []  # masked: the completion waits in the PBA
    saved = through_file(old.save_state())

    rig2, sink2, sched2 = Rig(), FakeMsiSink(), FakeScheduler()
    new = msix_demo(rig2, sink2, sched2)
    new.load_state(saved)
    for reg in range(0, 0x100, 4):
        assert rig2.cfg_read(slot, reg) == rig.cfg_read(slot, reg), f"config register {reg:#x}"
    assert new.bars[0].mapped == NEW_IO and rig2.pio.find(NEW_IO) is not None
    assert rig2.doorbells is not None and [h.addr for h in rig2.doorbells.handles] == [NEW_IO + 0x10]
    assert rig2.mmio.read(table + 8, 4) == 0x31 and rig2.mmio.read(table + 0x80, 8) == 1  # table and PBA
    assert rig2.pio.read(NEW_IO + 0x18, 4) == 1  # one completion
    rig2.mmio.write(table + 12, 4, 0)  # the guest unmasks: the pending message goes now
    assert sink2.messages == [MsiMessage(0xFEE0_0000, 0x31)]
    assert rig2.guest_write(True, NEW_IO + 0x10, 2, 1) and len(sched2.pending) == 1


def test_msi_pending_bit_and_intx_level_come_back() -> None:
    rig, sink = Rig(), FakeMsiSink()
    msi = MsiDemoPci(msi_sink=sink, schedule=FakeScheduler(immediate=True), per_vector_mask=True)
    intx = IntxDemoPci(irq=FakeIrqLine(gsi=17), schedule=FakeScheduler(immediate=True))
    rig.host.add(msi)
    rig.host.add(intx)
    assert msi.msi is not None and msi.slot is not None
    o = msi.msi.offset
    rig.cfg_write(msi.slot, o + 4, 4, 0xFEE0_0000)
    rig.cfg_write(msi.slot, o + 8, 2, 0x45)
    rig.cfg_write(msi.slot, msi.msi.mask_offset, 4, 1)
    rig.cfg_write(msi.slot, o + 2, 2, 1)
    msi.ring()
    intx.ring()
    assert msi.msi.pending == 1 and intx.intx_asserted
    rig2, sink2, line2 = Rig(), FakeMsiSink(), FakeIrqLine(gsi=17)
    msi2 = MsiDemoPci(msi_sink=sink2, schedule=FakeScheduler(), per_vector_mask=True)
    intx2 = IntxDemoPci(irq=line2, schedule=FakeScheduler())
    rig2.host.add(msi2)
    rig2.host.add(intx2)
    msi2.load_state(through_file(msi.save_state()))
    intx2.load_state(through_file(intx.save_state()))
    assert line2.level == 1 and intx2.read(6, 2) & 0x8  # INTx asserted again, Status bit 3 too
    assert msi2.msi is not None and msi2.msi.pending == 1 and sink2.messages == []
    rig2.cfg_write(msi.slot, msi2.msi.mask_offset, 4, 0)
    assert sink2.messages == [MsiMessage(0xFEE0_0000, 0x45)]


def test_dma_registers_and_buffer() -> None:
    memory = GuestMemory(MemoryMap(RAM))
    old = DmaMsixPci(memory=memory, msi_sink=FakeMsiSink(), schedule=FakeScheduler())
    Rig().host.add(old)
    old.extra_write(0x0C, 4, 16)
    old.buffer[:4] = b"abcd"
    new = DmaMsixPci(memory=memory, msi_sink=FakeMsiSink(), schedule=FakeScheduler())
    Rig().host.add(new)
    new.load_state(through_file(old.save_state()))
    assert new.extra_read(0x0C, 4) == 16 and new.buffer[:4] == b"abcd"


def test_pci_testdev_selected_test_keeps_its_doorbell() -> None:
    rig = Rig()
    old = PciTestDev()
    rig.host.add(old)
    mem = old.bars[0].mapped
    assert mem is not None
    rig.mmio.write(mem, 1, 1)  # select the "mmio" test with a notifier
    rig2 = Rig()
    new = PciTestDev()
    rig2.host.add(new)
    new.load_state(through_file(old.save_state()))
    assert new.current == old.current >= 0
    assert rig2.doorbells is not None and rig.doorbells is not None
    assert [h.addr for h in rig2.doorbells.handles] == [h.addr for h in rig.doorbells.handles]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(config=b"\0" * 255),
        lambda s: s["bars"].pop("0"),
        lambda s: s["msi"].update(msix_table=b"\0" * 8),
        lambda s: s["msi"].pop("msix_pba"),
        lambda s: s["function"].update(status=0x80),
        lambda s: s["function"]["engine"].update(current=[1]),
        lambda s: s.update(intx=2),
    ],
)
def test_hostile_pci_states_are_refused(mutate: Any) -> None:
    state = msix_demo(Rig(), FakeMsiSink(), FakeScheduler()).save_state()
    mutate(state)
    with pytest.raises(SnapshotError, match="pci-msix"):
        msix_demo(Rig(), FakeMsiSink(), FakeScheduler()).load_state(state)


def test_read_only_config_bytes_are_not_taken_from_a_state() -> None:
    state = msix_demo(Rig(), FakeMsiSink(), FakeScheduler()).save_state()
    state["config"] = b"\xff" * 4 + state["config"][4:]  # vendor and device ID
    fn = msix_demo(Rig(), FakeMsiSink(), FakeScheduler())
    fn.load_state(state)
    assert fn.read(0, 4) == 0x1991_1002


# -- virtio ----------------------------------------------------------------------------------------


def rng_function(rig: Rig, memory: GuestMemory, sink: FakeMsiSink) -> VirtioPci:
    fn = VirtioPci(VirtioRng(lambda n: b"\x5a" * n), memory=memory, msi_sink=sink, intx=None, kind=TransportKind.MODERN)
    rig.host.add(fn)
    return fn


def test_virtio_queue_state_and_a_request_made_available_before_the_snapshot() -> None:
    rig, memory, sink = Rig(), GuestMemory(MemoryMap(RAM)), FakeMsiSink()
    old = rng_function(rig, memory, sink)
    base, table = old.bars[MODERN_BAR].mapped, old.bars[1].mapped
    assert base is not None and table is not None and old.msix is not None and old.slot is not None
    rig.mmio.write(table, 8, 0xFEE0_0000)
    rig.mmio.write(table + 8, 4, 0x51)
    rig.mmio.write(table + 12, 4, 0)
    rig.cfg_write(old.slot, old.msix.offset + 2, 2, 0x8000)
    drv = start_modern(rig, old, base)
    rig.mmio.write(base + 0x16, 2, 0)
    rig.mmio.write(base + 0x1A, 2, 0)  # queue 0 -> vector 0 (set before DRIVER_OK would be refused: fine)
    drv.add([Buf(length=8, writable=True)])
    rig.mmio.write(base + modern.notify_offset(0), 2, 0)
    assert drv.used() == [(0, 8)] and len(sink.messages) == 1
    drv.add([Buf(length=4, writable=True)])  # made available, the kick never came: the VM paused
    saved = through_file(old.save_state())

    memory2 = GuestMemory(MemoryMap(RAM))
    memory2.write(0, memory.read(0, RAM))  # what the KVM side restores
    rig2, sink2 = Rig(), FakeMsiSink()
    new = rng_function(rig2, memory2, sink2)
    new.load_state(saved)
    assert new.transport.status == old.transport.status and new.transport.driver_ok
    q, q2 = old.transport.queues[0], new.transport.queues[0]
    assert (q2.desc, q2.avail, q2.used, q2.last_avail, q2.used_idx) == (
        q.desc,
        q.avail,
        q.used,
        q.last_avail,
        q.used_idx,
    )
    new.restart()  # what restore_devices does last
    drv2 = copy.copy(drv)
    drv2.mem, drv2.queue = memory2, q2
    assert drv2.used() == [(1, 4)] and sink2.messages == [MsiMessage(0xFEE0_0000, 0x51)]
    drv2.add([Buf(length=2, writable=True)])
    rig2.mmio.write(base + modern.notify_offset(0), 2, 0)
    assert drv2.used() == [(2, 2)]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t["queues"][0].update(desc=1 << 40), "not inside guest RAM"),
        (lambda t: t["queues"][0].update(size=3), "power of two"),
        (lambda t: t.update(driver_features=1 << 63), "not all offered"),
        (lambda t: t["queues"].append({}), "queues"),
        (lambda t: t.update(status=-1), "status"),
    ],
)
def test_hostile_virtio_states_are_refused(mutate: Any, match: str) -> None:
    rig, memory = Rig(), GuestMemory(MemoryMap(RAM))
    old = rng_function(rig, memory, FakeMsiSink())
    base = old.bars[MODERN_BAR].mapped
    assert base is not None
    start_modern(rig, old, base)
    state = old.save_state()
    mutate(state["function"]["transport"])
    with pytest.raises(SnapshotError, match=match):
        rng_function(Rig(), GuestMemory(MemoryMap(RAM)), FakeMsiSink()).load_state(state)


# -- a whole platform ------------------------------------------------------------------------------


def sketch() -> PlatformSketch:
    config = MachineConfig(mem_size=RAM, serial_output=lambda b: None, testdev=True, virtio_rng=True)
    config.virtio_console = lambda b: None
    return PlatformSketch(config)


def test_save_devices_restore_devices_round_trip_on_a_platform() -> None:
    one, two = sketch(), sketch()
    try:
        assert list(device_table(one)) == list(device_table(two))  # stable keys from the same configuration
        assert one.serial is not None and one.pci is not None
        one.serial.write(7, 1, 0xA5)
        fn = next(f for f in one.pci.functions.values() if f.name == "sync-pio-pci")
        fn.write(0x10, 4, NEW_IO)
        saved = through_file(save_devices(one))
        restore_devices(two, saved)
        again = through_file(save_devices(two))
        for state in (saved, again):
            del state["pio:0x608:acpi-pm-timer"]  # it counts on in real time (its continuity: test_device_state.py)
        assert again == saved
        assert two.pio_bus.read(NEW_IO + 4, 4) == 0 and two.serial is not None and two.serial.read(7, 1) == 0xA5
        region = two.pio_bus.find(NEW_IO)
        assert region is not None and region.name == "sync-pio-pci BAR0"
    finally:
        one.close()
        two.close()


def test_a_platform_refuses_foreign_missing_and_misshapen_device_states() -> None:
    one, two = sketch(), sketch()
    try:
        saved = save_devices(one)
        bad: Any
        for bad in ({**saved, "pio:0x1:ghost": {}}, {k: v for k, v in saved.items() if "ttyS0" not in k}, []):
            with pytest.raises(SnapshotError):
                restore_devices(two, bad)
        for key in saved:  # every device, given garbage: one clear error naming it, never a crash
            for garbage in (None, 7, {"x": 1}, [1]):
                with pytest.raises(SnapshotError):
                    restore_devices(two, {**saved, key: garbage})
    finally:
        one.close()
        two.close()


def test_virtio_blk_save_drains_the_requests_its_io_thread_took(tmp_path: Path) -> None:
    rig = BlockRig(image(tmp_path))
    try:
        for sector in range(12):
            header = Buf(struct.pack("<IIQ", T_IN, 0, sector))
            rig.drv.add([header, Buf(length=512, writable=True), Buf(length=1, writable=True)])
        rig.dev.notify(0)
        assert rig.dev.save_state() == {}  # returns once the IO thread is idle: nothing half done
        assert len(rig.drv.used()) == 12 and rig.q.used_idx == 12
    finally:
        rig.close()


def test_virtio_console_input_held_for_the_guest_survives() -> None:
    old, _, _, _ = console_rig(Sink())
    old.feed(b"typed before the driver gave a buffer")
    saved = through_file(old.save_state())
    new, rx, _, _ = console_rig(Sink())
    new.load_state(saved)
    _, addrs = rx.add([Buf(length=64, writable=True)])
    new.notify(0)
    assert rx.used() == [(0, 37)] and rx.mem.read(addrs[0], 37) == b"typed before the driver gave a buffer"
    with pytest.raises(SnapshotError, match="virtio-console"):
        new.load_state({"input": b"", "held": [0, 1 << 20]})  # more bytes sent than the chain has
