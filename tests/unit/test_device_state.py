"""Device snapshot state (issue 18, device side): the protocol, the JSON encoding, and a round trip per
legacy/demo device family -- a device in a non-trivial state, saved, through JSON, loaded into a fresh
one, reads back the same and behaves the same. Hostile states raise SnapshotError. No KVM."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from typing import Any

import pytest

import broiler
from broiler.core.bus import Device
from broiler.core.guard import GuardedDevice
from broiler.devices.demo.async_demo import ASYNC_PIO, VIOAPIC, AsyncDemo
from broiler.devices.demo.coalesced_log import CoalescedLog
from broiler.devices.demo.sync_demo import SyncRegisters
from broiler.devices.legacy.acpi_pm import AcpiPm
from broiler.devices.legacy.bochs_shutdown import BochsShutdown
from broiler.devices.legacy.cmos import Cmos
from broiler.devices.legacy.hpet import Hpet
from broiler.devices.legacy.i8042 import I8042
from broiler.devices.legacy.pm_timer import PM_TIMER_HZ, PmTimer
from broiler.devices.legacy.serial import Serial8250
from broiler.devices.testdev.fw_cfg import FwCfg
from broiler.devices.testdev.pc_testdev import PcTestdev
from broiler.devices.virtio.device import VirtioDevice
from broiler.errors import SnapshotError
from broiler.vmm.snapshot import jsonstate
from tests.unit.fakes import FakeIrqLine, FakeScheduler
from tests.unit.test_hpet import FakeTime


def through_file(state: Any) -> Any:
    """What the snapshot file does to a state: JSON with bytes as base64."""
    return jsonstate.loads(jsonstate.dumps(state))


# -- every device says what it saves ---------------------------------------------------------------


def _own_init_only_wires(cls: type) -> bool:
    """True if the class's own __init__ assigns nothing but its parameters (references handed to it)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(vars(cls)["__init__"])))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    params = {a.arg for a in func.args.args + func.args.kwonlyargs}
    for node in ast.walk(func):
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        wiring = isinstance(node.value, ast.Name) and node.value.id in params
        for target in targets:
            for t in ast.walk(target):
                if (
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    and not wiring
                ):
                    return False
    return True


def _subclasses(base: type) -> set[type]:
    found: set[type] = set()
    todo = [base]
    while todo:
        sub: type
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_device_declares_its_state_or_says_it_has_none() -> None:
    for module in pkgutil.walk_packages(broiler.__path__, "broiler."):
        if module.name.endswith("__main__"):
            continue  # runs the command line
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional extra (plotting) that is not installed
            continue
    undeclared = []
    for cls in _subclasses(Device) | _subclasses(VirtioDevice):
        if not cls.__module__.startswith("broiler."):
            continue
        own = vars(cls)
        if any(name in own for name in ("state_fields", "save_state", "save_function_state")):
            continue
        if "__init__" not in own or _own_init_only_wires(cls):
            continue
        undeclared.append(f"{cls.__module__}.{cls.__qualname__}")
    assert undeclared == [], "declare state_fields (or STATELESS) or save_state for these devices"


# -- the JSON encoding ---------------------------------------------------------------------------


def test_bytes_survive_json_and_other_values_stay() -> None:
    tree = {"a": b"\x00\xff", "b": [1, None, True, "x", {"c": bytearray(b"zz")}], "d": 1.5}
    assert through_file(tree) == {"a": b"\x00\xff", "b": [1, None, True, "x", {"c": b"zz"}], "d": 1.5}


@pytest.mark.parametrize("tree", [{1: 2}, {"$bytes": "x"}, {"s": {1, 2}}, object()])
def test_trees_that_would_not_come_back_the_same_are_refused(tree: Any) -> None:
    with pytest.raises(TypeError):
        jsonstate.dumps(tree)


@pytest.mark.parametrize("text", ['{"a": {"$bytes": "!!"}}', '{"a": {"$bytes": 3}}', "{", "[" * 100000])
def test_a_damaged_state_is_a_snapshot_error(text: str) -> None:
    with pytest.raises(SnapshotError):
        jsonstate.loads(text)


# -- legacy devices --------------------------------------------------------------------------------


def test_serial_registers_fifo_and_pending_interrupt() -> None:
    old = Serial8250(lambda b: None, FakeIrqLine(gsi=4))
    for offset, value in ((3, 0x80), (0, 0x01), (1, 0x00), (3, 0x1B), (4, 0x0B), (7, 0x5A), (2, 0x01), (1, 0x01)):
        old.write(offset, 1, value)
    old.feed(b"hi")
    line = FakeIrqLine(gsi=4)
    new = Serial8250(lambda b: None, line)
    new.load_state(through_file(old.save_state()))
    assert line.level == 1  # received data with RDI enabled: the interrupt is pending again
    for offset in (1, 2, 3, 4, 5, 7):
        assert new.read(offset, 1) == old.read(offset, 1)
    assert bytes(new.read(0, 1) for _ in range(2)) == b"hi" and line.level == 0
    new.write(3, 1, 0x9B)
    assert new.read(0, 1) == 0x01  # the divisor latch came back too


def test_cmos_index_and_nvram_but_the_clock_is_the_hosts() -> None:
    old = Cmos(64 << 20)
    old.write(0, 1, 0x40)
    old.write(1, 1, 0x99)
    old.write(0, 1, 0x8B | 0x80)  # register B selected, NMI off
    new = Cmos(64 << 20)
    new.load_state(through_file(old.save_state()))
    assert new.nmi_disabled and new.read(1, 1) == old.read(1, 1)
    new.write(0, 1, 0x40)
    assert new.read(1, 1) == 0x99


def test_i8042_output_queue_and_irq() -> None:
    old = I8042(lambda: None, FakeIrqLine(gsi=1), FakeIrqLine(gsi=12))
    old.command(0xAA)
    old.command(0xD3)
    old.write_data(0x42)  # an aux byte queued behind the keyboard's
    kbd, aux = FakeIrqLine(gsi=1), FakeIrqLine(gsi=12)
    new = I8042(lambda: None, kbd, aux)
    new.load_state(through_file(old.save_state()))
    assert kbd.level == 1 and new.status() == old.status()
    assert new.read_data() == 0x55 and new.read_data() == 0x42 and new.read_data() == 0


def test_acpi_pm_bochs_and_fw_cfg_registers() -> None:
    pm, shutdown, fw = AcpiPm(lambda: None), BochsShutdown(lambda s: None), FwCfg(ram_size=1 << 30, cpus=2)
    pm.write(2, 2, 0x0121)
    for byte in b"Shut":
        shutdown.write(0, 1, byte)
    fw.write(0, 2, 0x0005)
    fw.read(1, 1)
    pm2, shutdown2, fw2 = AcpiPm(lambda: None), BochsShutdown(lambda s: None), FwCfg(ram_size=1 << 30, cpus=2)
    for a, b in ((pm, pm2), (shutdown, shutdown2), (fw, fw2)):
        b.load_state(through_file(a.save_state()))
    assert pm2.read(2, 2) == 0x0121 and shutdown2.matched == 4
    assert fw2.read(1, 1) == fw.read(1, 1)


def test_pm_timer_continues_from_the_saved_count_not_from_host_time() -> None:
    now = [5_000_000_000]
    old = PmTimer(lambda: now[0])
    now[0] += 1_000_000_000
    saved = through_file(old.save_state())
    later = [900_000_000_000]  # another process, much later
    new = PmTimer(lambda: later[0])
    new.load_state(saved)
    assert new.count() == old.count()
    later[0] += 1_000_000_000
    assert new.count() == (old.count() + PM_TIMER_HZ) & 0xFFFFFF


def test_hpet_counter_continues_and_a_pending_timer_fires_after_restore() -> None:
    before, after, line = FakeTime(now=1_000_000_000), FakeTime(now=7_000_000_000_000), FakeIrqLine(gsi=0)
    old = Hpet({2: FakeIrqLine(gsi=0)}, before.schedule, before.clock)
    old.write(0x100, 8, (2 << 9) | 0x6)  # timer 0: level, enabled, routed to input 2
    old.write(0x108, 8, 50_000)  # match at tick 50000 (500 us)
    old.write(0x010, 8, 1)  # enable
    before.advance(100_000)  # 10000 ticks in
    saved = through_file(old.save_state())
    new = Hpet({2: line}, after.schedule, after.clock)  # another process, much later
    new.load_state(saved)
    assert new.read(0x0F0, 8) == old.read(0x0F0, 8) == 10_000
    assert new.read(0x100, 8) == old.read(0x100, 8) and new.read(0x108, 8) == 50_000
    assert [p.when_ns - after.now for p in after.live()] == [400_000]  # re-armed for the match still ahead
    after.advance(399_000)
    assert line.level == 0
    after.advance(1_000)
    assert new.read(0x020, 8) == 1 and line.level == 1 and new.fired[0] == 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("counter"),
        lambda s: s.update(config="1"),
        lambda s: s.update(status=1 << 8),
        lambda s: s["timers"].pop(),
        lambda s: s["timers"][0].update(config=1 << 40),
        lambda s: s["timers"][0].update(config=1 << 9),  # routed to input 1: not in INT_ROUTE_CAP
        lambda s: s.update(extra=1),
    ],
)
def test_hostile_hpet_states_are_refused(mutate: Any) -> None:
    t = FakeTime()
    state = Hpet({}, t.schedule, t.clock).save_state()
    mutate(state)
    with pytest.raises(SnapshotError, match="hpet"):
        Hpet({}, t.schedule, t.clock).load_state(state)


SERIAL_REGISTERS = Serial8250(lambda b: None).save_state()["registers"]
I8042_REGISTERS = {"config": 0, "pending": None, "kbd_arg_pending": False}


@pytest.mark.parametrize(
    "device, state",
    [
        (Serial8250(lambda b: None), {"registers": {}, "rx": b""}),
        (Serial8250(lambda b: None), {"registers": SERIAL_REGISTERS, "rx": b"x" * 5000}),
        (Cmos(), {"index": 200, "nmi_disabled": False, "nvram": bytes(128)}),
        (Cmos(), {"index": 1, "nmi_disabled": 0, "nvram": bytes(128)}),
        (Cmos(), {"index": 1, "nmi_disabled": False, "nvram": bytes(4096)}),
        (I8042(lambda: None), {"registers": I8042_REGISTERS, "out": [[300, False]]}),
        (I8042(lambda: None), {"registers": I8042_REGISTERS, "out": [[1]]}),
        (I8042(lambda: None), {"registers": {**I8042_REGISTERS, "pending": "x"}, "out": []}),
        (PmTimer(), {"count": -1}),
        (PmTimer(), {"count": 1.5}),
        (SyncRegisters(), {"regs": {"0": 1}}),
        (SyncRegisters(), {"regs": {"0": 1, "4": 0, "8": 0, "12": 1 << 32}}),
        (CoalescedLog(keep=4), {"count": 1, "hash": 0, "values": [1, 2, 3, 4, 5]}),
        (AcpiPm(lambda: None), []),
        (AcpiPm(lambda: None), None),
    ],
)
def test_hostile_states_are_snapshot_errors(device: Device, state: Any) -> None:
    with pytest.raises(SnapshotError):
        device.load_state(state)


# -- demo and test devices -------------------------------------------------------------------------


def test_sync_and_coalesced_log_registers() -> None:
    regs, log = SyncRegisters("sync-pio"), CoalescedLog()
    regs.write(0, 4, 7)
    regs.write(4, 4, 3)
    for v in (1, 2, 3):
        log.write(0, 4, v)
    regs2, log2 = SyncRegisters("sync-pio"), CoalescedLog()
    regs2.load_state(through_file(regs.save_state()))
    log2.load_state(through_file(log.save_state()))
    assert [regs2.read(o, 4) for o in (0, 4, 8, 12)] == [regs.read(o, 4) for o in (0, 4, 8, 12)] == [7, 3, 16, 64]
    assert (log2.read(8, 4), log2.read(12, 4)) == (3, log.read(12, 4))


@pytest.mark.parametrize("spec", [ASYNC_PIO, VIOAPIC])
def test_an_async_completion_pending_at_the_snapshot_completes_after_restore(spec: Any) -> None:
    old = AsyncDemo(spec, FakeIrqLine(gsi=5), FakeScheduler(), delay=0.05)
    old.ring(3)
    assert old.read(8, 4) == 2  # busy
    line, sched = FakeIrqLine(gsi=5), FakeScheduler()
    new = AsyncDemo(spec, line, sched, delay=0.05)
    new.load_state(through_file(old.save_state()))
    assert new.read(8, 4) == 2 and len(sched.pending) == 1 and 0 <= sched.delays[0] <= 0.05
    assert line.history == [] and line.pulses == 0  # nothing completes before its time
    sched.run()
    assert new.read(8, 4) == 1 and new.read(0xC, 4) == 3
    assert (line.pulses == 1) if spec.edge else (line.level == 1)


def test_an_unacknowledged_completion_holds_its_line_and_an_acknowledged_one_does_not() -> None:
    done = AsyncDemo(ASYNC_PIO, FakeIrqLine(gsi=5), FakeScheduler(immediate=True))
    done.ring(1)
    acked = AsyncDemo(ASYNC_PIO, FakeIrqLine(gsi=5), FakeScheduler(immediate=True))
    acked.ring(1)
    acked.write(8, 4, 1)
    for old, level in ((done, 1), (acked, 0)):
        line = FakeIrqLine(gsi=5)
        new = AsyncDemo(ASYNC_PIO, line, FakeScheduler())
        new.load_state(through_file(old.save_state()))
        assert line.level == level and new.read(0xC, 4) == 1 and new.read(8, 4) == level


def test_an_engine_state_that_does_not_add_up_is_refused() -> None:
    old = AsyncDemo(ASYNC_PIO, FakeIrqLine(gsi=5), FakeScheduler())
    old.ring(2)
    state = old.save_state()
    state["engine"]["kicks_completed"] = 5
    with pytest.raises(SnapshotError, match="async-pio"):
        AsyncDemo(ASYNC_PIO, FakeIrqLine(gsi=5), FakeScheduler()).load_state(state)
    state["engine"].update(kicks_completed=0, current=[1, 2])
    with pytest.raises(SnapshotError, match="async-pio"):
        AsyncDemo(ASYNC_PIO, FakeIrqLine(gsi=5), FakeScheduler()).load_state(state)


def test_pc_testdev_latch_iomem_and_irq_levels() -> None:
    old = PcTestdev.create(lines=[FakeIrqLine(gsi=n) for n in range(24)], flush_page=lambda gpa: None)
    old.latch.write(0, 4, 0xDEADBEEF)
    old.iomem.write(0x100, 8, 0x1122334455667788)
    old.irq.write(10, 1, 1)
    lines = [FakeIrqLine(gsi=n) for n in range(24)]
    new = PcTestdev.create(lines=lines, flush_page=lambda gpa: None)
    for a, b in ((old.latch, new.latch), (old.iomem, new.iomem), (old.irq, new.irq), (old.flush, new.flush)):
        b.load_state(through_file(a.save_state()))
    assert new.latch.read(0, 4) == 0xDEADBEEF and new.iomem.read(0x100, 8) == 0x1122334455667788
    assert [n for n, line in enumerate(lines) if line.level] == [10]


# -- users' devices ---------------------------------------------------------------------------------


class Counting:
    """A user's device with save_state/load_state (not a broiler Device)."""

    def __init__(self) -> None:
        self.count = 0

    def read(self, offset: int, size: int) -> int:
        return self.count

    def write(self, offset: int, size: int, value: int) -> None:
        self.count += 1

    def save_state(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state.get("count"), int):
            raise ValueError("count must be an int")
        self.count = state["count"]


class Plain:
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def guarded(device: object) -> GuardedDevice:
    return GuardedDevice(device, "mine", lambda off: f"port {off:#x}", lambda report: None)


def test_a_users_device_takes_part_through_its_own_save_and_load() -> None:
    old = guarded(Counting())
    old.write(0, 1, 0)
    old.write(0, 1, 0)
    new = guarded(Counting())
    new.load_state(through_file(old.save_state()))
    assert new.read(0, 4) == 2
    with pytest.raises(SnapshotError, match="mine: load_state refused"):
        new.load_state({"count": "two"})


def test_a_users_device_without_them_is_stateless() -> None:
    plain = guarded(Plain())
    assert plain.save_state() == {}
    plain.load_state({})
    with pytest.raises(SnapshotError, match="mine"):
        plain.load_state({"x": 1})
