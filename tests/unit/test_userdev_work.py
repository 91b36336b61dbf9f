"""A user's device's ``ctx.schedule`` work and snapshots (vmm/userdev.py, docs/api.md "Snapshots"), without KVM:
the context knows which calls have not run; a snapshot is refused, naming the device, while one is pending that
only a ``load_state`` the device's author wrote could schedule again; a device with one is trusted to."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from broiler.core.bus import Device
from broiler.errors import SnapshotError
from broiler.pci import BarKind, PciFunction
from broiler.vmm.machine import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.userdev import (
    DeviceContext,
    add_device,
    carries_its_own_work,
    check_user_work_saved,
    parse_device_spec,
)
from tests.conftest import ROOT


class Plain:
    """No save_state/load_state: saved as stateless, so its work in flight would be lost."""

    def __init__(self) -> None:
        self.ctx: DeviceContext | None = None
        self.done = threading.Event()

    def attach(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        assert self.ctx is not None
        self.ctx.schedule(value / 1000, self.done.set)  # "work" of `value` ms


class Fields(Device):
    """Registers by ``state_fields`` only: broiler loads fields, it cannot schedule anything again."""

    state_fields = ("count",)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ctx: DeviceContext | None = None

    def attach(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    def read(self, offset: int, size: int) -> int:
        return self.count

    def write(self, offset: int, size: int, value: int) -> None:
        assert self.ctx is not None
        self.ctx.schedule(1.0, lambda: None)


class Carrier(Plain):
    """Has a load_state of its own: broiler leaves its pending work to it (tests/kvm/snapshot_work.py has one
    that really schedules it again)."""

    def save_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class OwnFunction(PciFunction):
    def __init__(self) -> None:
        super().__init__(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000)
        self.add_bar(0, BarKind.MEM32, 0x1000, Fields())

    def load_function_state(self, state: dict[str, Any]) -> None:
        pass


def _sketch(device: object) -> PlatformSketch:
    sketch = PlatformSketch(MachineConfig(demo_devices=False))
    add_device(sketch, device, pio=0x700, size=4, name="mine")
    return sketch


def test_pending_work_is_listed_until_it_runs_and_cancelled_work_is_not() -> None:
    device = Plain()
    sketch = _sketch(device)
    assert device.ctx is not None and sketch.user_contexts == [device.ctx]
    handle = device.ctx.schedule(5.0, lambda: None)
    assert 4.0 < handle.remaining() <= 5.0 and device.ctx.pending_work() == [pytest.approx(5.0, abs=1.0)]
    handle.cancel()
    assert device.ctx.pending_work() == []
    sketch.pio_bus.write(0x700, 4, 10)  # 10 ms of work
    assert len(device.ctx.pending_work()) == 1
    sketch.loop.start()
    try:
        assert device.done.wait(5)
        sketch.loop.run_sync(lambda: None)
        assert device.ctx.pending_work() == []  # it ran: nothing left for a snapshot to lose
    finally:
        sketch.loop.close()


def test_a_snapshot_is_refused_while_work_is_pending_that_nothing_would_schedule_again() -> None:
    for device in (Plain(), Fields()):
        sketch = _sketch(device)
        check_user_work_saved(sketch)  # nothing pending: fine
        sketch.pio_bus.write(0x700, 4, 2000)
        with pytest.raises(SnapshotError, match=r"device 'mine' has work scheduled with ctx.schedule \(due in"):
            check_user_work_saved(sketch)


def test_a_device_with_its_own_load_state_is_trusted_with_its_work() -> None:
    device = Carrier()
    sketch = _sketch(device)
    sketch.pio_bus.write(0x700, 4, 2000)
    check_user_work_saved(sketch)  # not refused: its load_state schedules the work again
    assert carries_its_own_work(OwnFunction()) and not carries_its_own_work(Fields())
    plain_function = PciFunction(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000)
    assert not carries_its_own_work(plain_function) and not carries_its_own_work(Plain())


def test_the_async_checksum_example_carries_its_run_in_flight() -> None:
    """examples/async_checksum.py saves its registers and DoorbellEngine: the run in flight at the save is
    scheduled again, through the new context, with its time left; a snapshot of it is not refused."""
    spec = parse_device_spec(f"{ROOT / 'examples' / 'async_checksum.py'}:AsyncChecksum,pio=0x720,delay=3")
    one = PlatformSketch(MachineConfig(demo_devices=False, devices=[spec]))
    one.pio_bus.write(0x720 + 0x10, 4, 0x1000)  # ADDR
    one.pio_bus.write(0x720 + 0x14, 4, 16)  # LEN
    one.pio_bus.write(0x720, 2, 1)  # the doorbell, trapped: a run starts, its completion 3 s away
    check_user_work_saved(one)
    (device,) = [ctx.device for ctx in one.user_contexts]
    saved = device.save_state()  # type: ignore[attr-defined]
    two = PlatformSketch(MachineConfig(demo_devices=False, devices=[spec]))
    (again,) = [ctx.device for ctx in two.user_contexts]
    again.load_state(saved)  # type: ignore[attr-defined]
    assert again.save_state()["regs"] == saved["regs"]  # type: ignore[attr-defined]
    (left,) = two.user_contexts[0].pending_work()
    assert 0 < left <= 3.0
    with pytest.raises(ValueError, match="32-bit"):
        again.load_state({**saved, "regs": [1, 2, 3]})  # type: ignore[attr-defined]
