"""Issue 18, item 5, with a real guest across processes: guests/snapshot_async.c moves async-mmio-pci's memory BAR,
rings the async-pio doorbell with a long ``--async-delay`` and says it is waiting. The test snapshots it then
(``broiler snapshot NAME FILE --stop``) and restores it in a new process (``broiler run --restore FILE``): the
completion that was pending arrives there, and the moved BAR's doorbell -- an ioeventfd at the new address --
starts a job whose INTx comes back, while the old address reaches nothing. The guest checks each step itself
and ends at once on a failed check.

Users' devices (tests/kvm/snapshot_work.py on the pause_count guest): a snapshot while a device without a
``load_state`` of its own has ``ctx.schedule`` work pending is refused in one line naming it, and the VM runs
on; a device that saves its work's time left and schedules it again in ``load_state`` finishes it after a
restore in a new process."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from broiler.vmm.snapshot import format as snapfmt
from tests.conftest import ROOT
from tests.kvm.helpers import cli_env, cli_in, passed

pytestmark = pytest.mark.kvm

GUEST = str(ROOT / "broiler" / "guests" / "snapshot_async.bin")
DELAY = "3"  # seconds of async "work": the snapshot (a new `broiler snapshot` process) comes well within it
NEW_BAR, OLD_BAR = 0xC300_0000, 0xC200_0200  # where the guest moves async-mmio-pci's BAR0, and where it was
WAITING = "waiting for async-pio"
PIO_DONE = "async-pio: completed, COMPLETIONS 1"
PCI_DONE = f"async-mmio-pci: doorbell at {NEW_BAR + 0x10:#x} completed, COMPLETIONS 1"
OLD_SILENT = f"async-mmio-pci: old address {OLD_BAR:#x} reads all ones, its doorbell starts nothing"


def _lines_of(vm: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The VM's stdout, a line at a time, read on a thread (None at its end) so the test can wait with a
    deadline instead of blocking on a VM that never prints."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert vm.stdout is not None
        for line in vm.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str | None], wanted: str, seconds: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while wanted not in seen:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, f"the VM ended before {wanted!r}: {seen}"
        seen.append(line)
    return seen


def _rest(lines: queue.Queue[str | None]) -> list[str]:
    rest = []
    while (line := lines.get(timeout=60)) is not None:
        rest.append(line)
    return rest


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run, snapshot while the completion is pending, restore in a new process: what each side showed."""
    tmp = tmp_path_factory.mktemp("snapguest")
    env = cli_env(tmp)
    snap, stats = tmp / "async.snap", tmp / "stats.json"
    run = [sys.executable, "-m", "broiler", "run", "--timeout", "60"]
    vm = subprocess.Popen(
        [*run, "--guest", GUEST, "--async-delay", DELAY, "--name", "a1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        lines = _lines_of(vm)
        before = _until(lines, WAITING, 30)
        done = cli_in(env, "snapshot", "a1", str(snap), "--stop")
        before += _rest(lines)
        first_status = vm.wait(timeout=60)
    finally:
        vm.kill()
        vm.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    with open(snap, "rb") as f:
        _, state = snapfmt.read_state(f, str(snap))
    after = subprocess.run(
        [*run, "--restore", str(snap), "--name", "a2", "--stats-json", str(stats)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    return {
        "before": before,
        "first_status": first_status,
        "devices": state["devices"],
        "after": after.stdout.splitlines(),
        "status": after.returncode,
        "stderr": after.stderr,
        "stats": json.loads(stats.read_text()) if stats.exists() else {},
    }


def test_a_pending_async_completion_completes_after_a_restore_in_a_new_process(restored: dict[str, Any]) -> None:
    assert restored["first_status"] == 0  # ended by the snapshot's --stop, not by the guest
    assert WAITING in restored["before"] and PIO_DONE not in restored["before"], restored["before"]
    engine = restored["devices"]["pio:0x60a0:async-pio"]["engine"]
    assert engine["current"] == [1, 1, 1] and engine["runs_completed"] == 0  # in flight when saved ...
    assert 0 < engine["remaining_us"] <= float(DELAY) * 1e6  # ... with part of its delay left
    assert passed(restored["status"]), (restored["status"], restored["after"], restored["stderr"])
    assert restored["after"][0] == PIO_DONE, restored["after"]  # the guest went on from its wait, no reboot
    assert WAITING not in restored["after"]


def test_a_moved_bar_stays_moved_and_its_doorbell_works_after_a_restore(restored: dict[str, Any]) -> None:
    config = restored["devices"]["pci:05:async-mmio-pci"]["config"]
    assert int.from_bytes(config[0x10:0x14], "little") == NEW_BAR  # the snapshot holds the moved BAR
    assert passed(restored["status"]), (restored["status"], restored["after"], restored["stderr"])
    assert PCI_DONE in restored["after"] and OLD_SILENT in restored["after"], restored["after"]
    bells = {(b["owner"], b["addr"]): b["kicks"] for b in restored["stats"]["doorbells"]}
    assert bells[("async-mmio-pci", NEW_BAR + 0x10)] == 1  # the guest's write went through the ioeventfd
    assert bells.get(("async-mmio-pci", OLD_BAR + 0x10), 0) == 0


WORK = str(ROOT / "tests" / "kvm" / "snapshot_work.py")
COUNTING = str(ROOT / "broiler" / "guests" / "pause_count.bin")
NAME = "worker"


def _start_counting(env: dict[str, str], device: str, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broiler",
            "run",
            "--timeout",
            "60",
            "--guest",
            COUNTING,
            "--device",
            device,
            "--name",
            name,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_log(log: Path, line: str, vm: subprocess.Popen[str], seconds: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds
    while line not in (seen := log.read_text().splitlines() if log.exists() else []):
        assert vm.poll() is None, f"the VM ended early: {vm.stderr.read() if vm.stderr else ''}"
        assert time.monotonic() < deadline, f"no {line!r} in {log} within {seconds:g} s"
        time.sleep(0.05)
    return seen


def test_a_snapshot_is_refused_while_a_stateless_user_device_has_work_scheduled(
    env: dict[str, str], tmp_path: Path
) -> None:
    log, snap = tmp_path / "work.log", tmp_path / "work.snap"
    vm = _start_counting(env, f"{WORK}:SlowWork,pio=0x7000,log={log}", NAME)
    try:
        _wait_log(log, "scheduled", vm)
        refused = cli_in(env, "snapshot", NAME, str(snap), "--stop")
        assert refused.returncode == 2, (refused.returncode, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "device 'SlowWork' has work scheduled with ctx.schedule" in lines[0], lines
        assert not snap.exists() and vm.poll() is None  # no file, and the VM runs on (even with --stop)
        assert cli_in(env, "stop", NAME).returncode == 0
        assert vm.wait(timeout=60) == 130
    finally:
        vm.kill()
        vm.wait(timeout=30)


def test_a_user_device_that_carries_its_work_finishes_it_after_a_restore(env: dict[str, str], tmp_path: Path) -> None:
    log, snap = tmp_path / "work.log", tmp_path / "carried.snap"
    vm = _start_counting(env, f"{WORK}:CarriedWork,pio=0x7000,log={log},delay=3", NAME)
    try:
        _wait_log(log, "scheduled", vm)
        done = cli_in(env, "snapshot", NAME, str(snap), "--stop")
        assert done.returncode == 0, done.stderr
        assert vm.wait(timeout=60) == 0
        assert log.read_text().splitlines() == ["scheduled"]  # still pending when saved
        vm = subprocess.Popen(
            [sys.executable, "-m", "broiler", "run", "--restore", str(snap), "--timeout", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert _wait_log(log, "done", vm) == ["scheduled", "done"]  # finished in the new process, once
    finally:
        vm.kill()
        vm.wait(timeout=30)
