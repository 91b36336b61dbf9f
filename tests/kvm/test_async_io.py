"""Issue 3 acceptance: ioeventfd doorbells, coalesced MMIO and interrupts with real guests."""

from __future__ import annotations

import itertools

import pytest

from broiler.core.bus import Device, all_ones
from broiler.core.memory import MiB
from broiler.devices.doorbell_engine import LOG_SIZE
from broiler.guests import packaged_guest
from broiler.vmm.machine import Machine, MachineConfig
from tests.kvm.helpers import passed, run_guest

pytestmark = pytest.mark.kvm

ASYNC = ("vpic", "vioapic", "async-pio", "async-mmio")


def _regions(machine: Machine) -> dict:
    return {r.name: r for r in machine.pio_bus.regions() + machine.mmio_bus.regions()}


def test_each_async_device_completes_every_doorbell_with_one_interrupt() -> None:
    run = run_guest("async_test", async_delay=0.005)
    assert passed(run.status), run.output
    regions = _regions(run.machine)
    kicks = {b.owner: b.kicks for b in run.machine.doorbells.history}
    for name in ASYNC:
        dev = regions[name].device
        assert kicks[name] == 5, name  # KVM caught all 5 doorbell writes
        assert dev.trapped_kicks == 0, name  # ... so none of them exited
        assert dev.completions == 5 and dev.line.raised == 5, name
        # the guest waits for each interrupt, so no kick arrived while busy: one run per kick
        assert [(r.first, r.last) for r in dev.completion_log] == [(i, i) for i in range(1, 6)], name
        assert dev.engine.busy_kicks == 0, name
        # the only sync writes are the guest's 5 STATUS acknowledges
        assert regions[name].stats.writes == 5, name
    assert "IRQ_NUM 16" in run.output  # vioapic's line comes from the IOAPIC-only pool
    from broiler.core.irq import IrqFd

    vioapic_line = regions["vioapic"].device.line
    assert isinstance(vioapic_line, IrqFd) and vioapic_line.triggered == 5  # edge via irqfd, no ioctl


def test_coalesced_writes_arrive_in_order_before_the_read() -> None:
    run = run_guest("async_test", async_delay=0.005)
    assert passed(run.status), run.output
    log = _regions(run.machine)["coalesced-log"]
    assert log.device.values == [i * 7 + 3 for i in range(100)]
    assert log.stats.coalesced == 101  # RESET + 100 values, none of them an exit
    assert (log.stats.reads, log.stats.writes) == (2, 0)


def test_coalesced_writes_survive_an_immediate_stop() -> None:
    run = run_guest("coalesced_stop")
    assert passed(run.status), run.output
    log = _regions(run.machine)["coalesced-log"]
    assert log.device.values == [1000 + i for i in range(150)]
    assert log.stats.writes == 0 and log.stats.coalesced == 151


class Recorder(Device):
    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, int, int]] = []

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))

    def read(self, offset: int, size: int) -> int:
        return 0x1234 & all_ones(size)


def test_datamatch_doorbells_reach_their_own_handlers_and_misses_reach_the_bus() -> None:
    out: list[bytes] = []
    with Machine(MachineConfig(mem_size=64 * MiB, serial_output=out.append)) as machine:
        port_dev, mmio_dev = Recorder(), Recorder()
        machine.add_pio(0x6100, 2, port_dev)
        machine.add_mmio(0xD000_0F00, 4, mmio_dev)
        got: dict[str, int] = {"one": 0, "two": 0, "seven": 0}

        def count(key: str):  # noqa: ANN202
            return lambda kicks: got.__setitem__(key, got[key] + kicks)

        one = machine.doorbells.add(pio=True, addr=0x6100, length=2, datamatch=1, callback=count("one"), owner="t")
        two = machine.doorbells.add(pio=True, addr=0x6100, length=2, datamatch=2, callback=count("two"), owner="t")
        machine.doorbells.add(pio=False, addr=0xD000_0F00, length=4, datamatch=7, callback=count("seven"), owner="t")
        machine.load_flat64(packaged_guest("doorbells"))
        assert passed(machine.run(timeout=60))
        assert got == {"one": 1, "two": 2, "seven": 1}
        assert (one.kicks, two.kicks) == (1, 2)
        assert port_dev.writes == [(0, 2, 3), (0, 1, 1)]  # the datamatch miss and the odd length
        assert mmio_dev.writes == [(0, 4, 8)]


def test_two_vcpus_ringing_concurrently_lose_nothing() -> None:
    run = run_guest("async_smp", cpus=2, async_delay=0.0)
    assert passed(run.status), run.output
    dev = _regions(run.machine)["async-pio"].device
    bell = next(b for b in run.machine.doorbells.history if b.owner == "async-pio")
    assert bell.kicks == 400 and dev.trapped_kicks == 0  # 200 from each vCPU, none exited
    # No loss, no duplicate, in order: the runs cover kicks 1..400 back to back (kicks that arrived
    # while a run was busy coalesced into the next run; the log keeps the last runs only).
    runs = list(dev.completion_log)
    assert dev.completions == 400 and runs[-1].last == 400
    assert all(b.first == a.last + 1 for a, b in itertools.pairwise(runs))
    assert dev.engine.runs == dev.engine.runs_completed and len(runs) == min(dev.engine.runs, LOG_SIZE)
    assert sum(r.kicks for r in runs) + (runs[0].first - 1) == 400


def test_raising_a_line_after_the_vm_stopped_is_a_no_op() -> None:
    run = run_guest("sync_test")
    line = run.machine.irqs.line(5)
    line.set_level(True)
    line.pulse()
    assert line.raised == 0
