"""``broiler bench --snapshot``: snapshot and restore times of a large guest with part of its RAM touched.

The VM: ``--startup-mem`` of RAM (default 4 GiB), the pause_count guest running on one vCPU, and
``TOUCHED`` bytes of RAM filled with data that is not zero (written from the host before the run, spread
over low and high RAM: the snapshot cannot tell who wrote a page). Measured, in this process:

- snapshot: ``take_snapshot`` from the pause to the file renamed in place (the guest is paused that long);
  the file's apparent size and its size on disk;
- restore: ``restore_machine`` (read and check the state, map RAM from the file, put KVM and devices back),
  then to the guest's first port write after ``run()`` starts (its first instructions are the rest of a
  spin loop, so this bounds the time to the first instruction from above).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

from ..core.bus import Device
from ..core.memory import GiB, MiB
from ..core.state import STATELESS
from ..guests import packaged_guest
from ..vmm.config import MachineConfig
from ..vmm.machine import Machine
from ..vmm.snapshot.api import restore_machine, take_snapshot
from ..vmm.userdev import parse_device_spec

TOUCHED = 200 * MiB
COUNTER_PORT = 0x7000


class FirstWrite(Device):
    """The bench's probe, put on both machines as a user's ``--device`` (so the snapshot carries it)."""

    name = "bench-first-write"
    state_fields = STATELESS
    made: list[FirstWrite] = []  # every instance, newest last: how the bench finds the restored machine's

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.at = 0.0
        FirstWrite.made.append(self)

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.seen.is_set():
            self.at = time.perf_counter()
            self.seen.set()


def _touch(machine: Machine, amount: int) -> None:
    block = bytes(range(1, 256)) * (MiB // 255 + 1)
    regions = machine.memory.regions
    per_region = amount // len(regions) // MiB
    for start, end, _ in regions:
        first = max(start, 16 * MiB)  # clear of the guest's image and stacks
        step = max((end - first) // max(per_region, 1) // MiB * MiB, MiB)
        for i in range(per_region):
            machine.memory.write(first + i * step, block[:MiB])


def _run_until_first_write(machine: Machine) -> tuple[FirstWrite, threading.Thread]:
    counter = FirstWrite.made[-1]
    runner = threading.Thread(target=lambda: machine.run(timeout=60), daemon=True)
    runner.start()
    if not counter.seen.wait(60):
        raise RuntimeError("the bench guest wrote nothing within 60 s")
    return counter, runner


def bench_snapshot(mem: int = 4 * GiB, touched: int = TOUCHED) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="broiler-bench-snap-")
    path = os.path.join(directory, "bench.snap")
    probe = parse_device_spec(f"{__name__}:FirstWrite,pio={COUNTER_PORT:#x},size=4")
    machine = Machine(MachineConfig(mem_size=mem, serial_output=lambda b: None, devices=[probe]))
    try:
        machine.load_flat64(packaged_guest("pause_count"))
        _touch(machine, touched)
        _, runner = _run_until_first_write(machine)
        info = take_snapshot(machine, path, stop=True)
        runner.join(timeout=30)
    finally:
        machine.close()
    started = time.perf_counter()
    restored = restore_machine(path, serial_output=lambda b: None)
    built = time.perf_counter()
    try:
        run_from = time.perf_counter()
        counter, runner = _run_until_first_write(restored)
        restored.request_exit(0, "bench over")
        runner.join(timeout=30)
    finally:
        restored.close()
        os.unlink(path)
        os.rmdir(directory)
    return {
        "mem": mem,
        "touched": touched,
        "snapshot_s": info.seconds,
        "apparent_bytes": info.apparent_size,
        "disk_bytes": info.disk_size,
        "restore_machine_s": built - started,
        "run_to_first_write_s": counter.at - run_from,
        "restore_to_first_write_s": counter.at - started,
    }


def render_snapshot(row: dict[str, Any]) -> list[str]:
    return [
        f"snapshot of a {row['mem'] // MiB} MiB guest with {row['touched'] // MiB} MiB touched:",
        f"  snapshot (paused to file in place)   {row['snapshot_s'] * 1000:8.1f} ms",
        f"  file: apparent {row['apparent_bytes'] / MiB:.1f} MiB, on disk {row['disk_bytes'] / MiB:.1f} MiB",
        f"  restore_machine (state, map, KVM)    {row['restore_machine_s'] * 1000:8.1f} ms",
        f"  run() to the guest's first port write {row['run_to_first_write_s'] * 1000:7.1f} ms",
        f"  restore to first port write, total   {row['restore_to_first_write_s'] * 1000:8.1f} ms",
    ]
