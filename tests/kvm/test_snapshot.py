"""Issue 18: snapshot and restore, the KVM side. The pause_count guest (guests/pause_count.c) counts on a port
from both vCPUs; a ``--device`` (snapshot_counter.py) appends every number to a log. It is snapshotted with
``broiler snapshot --stop`` at whatever count it reached, restored in a new process (which appends to the same
log), snapshotted again and restored again: each vCPU's numbers must run 0, 1, 2, ... with no gap and no
repeat. RAM above 4 GiB survives a restore in a new process; bad files and bad options give one line, exit 2."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broiler import exitcodes
from broiler.core.memory import GiB, MiB
from broiler.errors import SnapshotError
from broiler.guests import packaged_guest
from broiler.vmm.config import MachineConfig
from broiler.vmm.machine import Machine
from broiler.vmm.snapshot import format as snapfmt
from broiler.vmm.snapshot.api import take_snapshot
from broiler.vmm.snapshot.format import PREFIX_SIZE
from broiler.vmm.virtio import DiskSpec
from tests.conftest import ROOT
from tests.kvm.helpers import cli_in, passed

pytestmark = pytest.mark.kvm

GUEST = str(ROOT / "broiler" / "guests" / "pause_count.bin")
COUNTER = str(ROOT / "tests" / "kvm" / "snapshot_counter.py")
WAIT = 60.0


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broiler", "run", "--timeout", "120", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _counts(log: Path, cpus: int) -> list[list[int]]:
    seen: list[list[int]] = [[] for _ in range(cpus)]
    text = log.read_text() if log.exists() else ""
    for line in text.splitlines()[: -1 if text and not text.endswith("\n") else None]:
        cpu, value = line.split()
        seen[int(cpu)].append(int(value))
    return seen


def _wait_counts(log: Path, cpus: int, at_least: int, vm: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while min(len(s) for s in _counts(log, cpus)) < at_least:
        assert vm.poll() is None, f"the VM ended early: {vm.stderr.read() if vm.stderr else ''}"
        assert time.monotonic() < deadline, f"fewer than {at_least} numbers per vCPU within {WAIT:g} s"
        time.sleep(0.05)


def _snapshot_and_end(env: dict[str, str], name: str, path: Path, vm: subprocess.Popen[str]) -> None:
    done = cli_in(env, "snapshot", name, str(path), "--stop")
    assert done.returncode == 0, done.stderr
    assert str(path) in done.stdout and "MiB on disk" in done.stdout
    vm.wait(timeout=60)


def test_restore_continues_both_vcpus_and_a_restored_vm_snapshots_again(env: dict[str, str], tmp_path: Path) -> None:
    log, first, second = tmp_path / "counts.log", tmp_path / "first.snap", tmp_path / "second.snap"
    device = f"{COUNTER}:Counter,pio=0x7000,size=8,log={log}"
    vm = _start(env, "--guest", GUEST, "-c", "2", "--device", device, "--name", "one")
    try:
        _wait_counts(log, 2, 30, vm)
        _snapshot_and_end(env, "one", first, vm)
        before = _counts(log, 2)
        vm = _start(env, "--restore", str(first), "--name", "two")  # a new process: nothing but the file
        _wait_counts(log, 2, max(len(s) for s in before) + 30, vm)
        _snapshot_and_end(env, "two", second, vm)
        vm = _start(env, "--restore", str(second), "--name", "three")
        middle = _counts(log, 2)
        _wait_counts(log, 2, max(len(s) for s in middle) + 30, vm)
    finally:
        vm.kill()
        vm.wait(timeout=30)
    for cpu, numbers in enumerate(_counts(log, 2)):
        assert len(before[cpu]) >= 30
        assert numbers == list(range(len(numbers))), f"vCPU {cpu}: a gap or a repeat across the restores"


def test_lapic_timer_pit_and_pic_tick_on_after_a_restore(env: dict[str, str], tmp_path: Path) -> None:
    """guests/snapshot_ticks.c: the LAPIC timer and the PIT (through the PIC) each count from their handler.
    Restored in a new process, both go on from the next number: their state came back from KVM's side."""
    log, path = tmp_path / "ticks.log", tmp_path / "ticks.snap"
    guest = str(ROOT / "broiler" / "guests" / "snapshot_ticks.bin")
    vm = _start(env, "--guest", guest, "--device", f"{COUNTER}:Counter,pio=0x7000,size=8,log={log}", "--name", "t1")
    try:
        _wait_counts(log, 2, 10, vm)
        _snapshot_and_end(env, "t1", path, vm)
        before = _counts(log, 2)
        vm = _start(env, "--restore", str(path), "--name", "t2")
        _wait_counts(log, 2, max(len(s) for s in before) + 10, vm)
    finally:
        vm.kill()
        vm.wait(timeout=30)
    for timer, numbers in zip(("LAPIC timer", "PIT"), _counts(log, 2), strict=True):
        assert numbers == list(range(1, len(numbers) + 1)), f"{timer}: a gap or a repeat across the restore"


def test_ram_above_4g_survives_in_a_new_process(tmp_path: Path) -> None:
    """The highmem guest writes a pattern at 4 GiB (RAM above the PCI hole) and ends; a new process restores
    the snapshot and reads the pattern from the file-backed RAM. The file is sparse: 5 GiB apparent."""
    path = tmp_path / "high.snap"
    machine = Machine(MachineConfig(mem_size=5 * GiB, serial_output=lambda b: None))
    try:
        machine.load_flat64(packaged_guest("highmem"))
        assert passed(machine.run(timeout=60))
        info = take_snapshot(machine, str(path))
    finally:
        machine.close()
    assert info.apparent_size >= 5 * GiB and info.disk_size < 64 * MiB
    script = (
        "import sys; from broiler.vmm.snapshot.api import restore_machine\n"
        "m = restore_machine(sys.argv[1], serial_output=lambda b: None)\n"
        "print(m.memory.read(1 << 32, 12).hex(), m.memory.backing is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [(0x0123456789ABCDEF).to_bytes(8, "little").hex() + "cefaedfe", "True"]


@pytest.fixture
def snapshot_with_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A small snapshot of a machine with one disk (never run: the file is what these tests are about)."""
    disk, path = tmp_path / "disk.img", tmp_path / "d.snap"
    disk.write_bytes(bytes(64 * 1024))
    machine = Machine(MachineConfig(mem_size=16 * MiB, disks=[DiskSpec(str(disk))], serial_output=lambda b: None))
    try:
        machine.load_flat64(packaged_guest("pause_count"))
        take_snapshot(machine, str(path))
    finally:
        machine.stop()  # releases the disk (its lock) as a run's end would
        machine.close()
    yield path, disk


def _refused(env: dict[str, str], *args: str) -> str:
    done = cli_in(env, "run", *args)
    assert done.returncode == exitcodes.USAGE, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _patched(path: Path, offset: int, data: bytes, tmp_path: Path, name: str) -> Path:
    """A copy of ``path`` with ``data`` at ``offset`` (never the whole file in this process's memory: the
    fuzz test's RSS bound measures children that exec from this process, high-water mark included)."""
    out = tmp_path / name
    shutil.copyfile(path, out)
    with open(out, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return out


def _rewritten(
    path: Path,
    tmp_path: Path,
    name: str,
    change: Callable[[dict[str, Any]], object] = lambda state: None,
    version: int = snapfmt.FORMAT_VERSION,
) -> Path:
    """A copy of ``path`` whose state (as JSON) went through ``change``, behind a prefix of ``version`` whose
    lengths and checksums are right: only what the state or the version say can make a restore refuse it."""
    with open(path, "rb") as f:
        layout, state = snapfmt.read_state(f, str(path))
    edited = json.loads(json.dumps(state, default=lambda b: {"$bytes": base64.b64encode(b).decode()}))
    change(edited)
    raw = json.dumps(edited).encode()
    out = _patched(path, layout.state_offset, raw, tmp_path, name)
    os.truncate(out, layout.state_offset + len(raw))
    new_layout = snapfmt.Layout(layout.mem_offset, layout.mem_len, layout.state_offset, len(raw))
    with open(out, "r+b") as f:
        f.write(snapfmt.pack_prefix(new_layout, zlib.crc32(raw), version))
    return out


def test_bad_snapshots_and_options_are_one_line_and_exit_2(
    env: dict[str, str], tmp_path: Path, snapshot_with_disk: tuple[Path, Path]
) -> None:
    path, disk = snapshot_with_disk
    size = path.stat().st_size
    truncated = tmp_path / "cut.snap"
    shutil.copyfile(path, truncated)
    os.truncate(truncated, size - 100)
    assert "truncated" in _refused(env, "--restore", str(truncated))
    damaged = _patched(path, size - 50, b"\xff\xfe", tmp_path, "damaged.snap")
    assert "damaged" in _refused(env, "--restore", str(damaged))
    header = _patched(path, 20, b"\x01", tmp_path, "header.snap")
    assert "damaged" in _refused(env, "--restore", str(header))
    foreign = tmp_path / "foreign.snap"
    foreign.write_bytes(b"\x7fELF" + bytes(PREFIX_SIZE))
    assert "not a broiler snapshot" in _refused(env, "--restore", str(foreign))
    assert "cannot read" in _refused(env, "--restore", str(tmp_path / "absent.snap"))
    assert "cannot go with --restore" in _refused(env, "--restore", str(path), "-m", "1G")
    assert "go with --restore" in _refused(env, "--verify")
    disk.write_bytes(bytes(128 * 1024))
    assert "bytes now" in _refused(env, "--restore", str(path))
    moved = tmp_path / "moved.img"
    disk.rename(moved)
    assert "--disk-path" in _refused(env, "--restore", str(path))
    moved.write_bytes(bytes(64 * 1024))
    ok = _start(env, "--restore", str(path), "--disk-path", f"{disk}={moved}", "--verify", "--timeout", "1")
    _, err = ok.communicate(timeout=60)
    assert ok.returncode == exitcodes.TIMEOUT, err  # restored and ran until the timeout


def test_another_format_version_is_refused(
    env: dict[str, str], tmp_path: Path, snapshot_with_disk: tuple[Path, Path]
) -> None:
    path, _ = snapshot_with_disk
    other = _rewritten(path, tmp_path, "v2.snap", version=snapfmt.FORMAT_VERSION + 1)  # a valid header, v2
    assert "format version" in _refused(env, "--restore", str(other))


def test_a_crafted_state_with_a_valid_checksum_is_one_line(
    env: dict[str, str], tmp_path: Path, snapshot_with_disk: tuple[Path, Path]
) -> None:
    """Checksums catch damage, not intent: a state re-written with the right CRC but the wrong shapes."""
    path, _ = snapshot_with_disk
    for name, change in (
        ("regs", lambda st: st["vcpus"][0].update(regs="not bytes")),
        ("config", lambda st: st["config"].pop("cpus")),
        ("memory", lambda st: st["memory"]["regions"][0].update(file_offset=-4096)),
    ):
        out = _rewritten(path, tmp_path, f"crafted-{name}.snap", change)
        line = _refused(env, "--restore", str(out))
        assert "malformed" in line or "incomplete" in line or "inconsistent" in line, line


def test_in_process_snapshot_resumes_the_vm() -> None:
    """take_snapshot without stop: the VM was running, is paused for the write, and runs on after it. A
    snapshot that cannot be written leaves the VM running even with stop."""
    machine = Machine(MachineConfig(mem_size=16 * MiB, serial_output=lambda b: None))
    runner = threading.Thread(target=lambda: machine.run(timeout=60), daemon=True)
    try:
        machine.load_flat64(packaged_guest("pause_count"))
        runner.start()
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"broiler-snap-{os.getpid()}.snap"
        info = take_snapshot(machine, str(path))
        path.unlink()
        assert info.disk_size > PREFIX_SIZE and not machine.pause_control.paused
        with pytest.raises(SnapshotError, match="cannot write snapshot"):
            take_snapshot(machine, "/nonexistent-dir/x.snap", stop=True)
        assert not machine.stopping and not machine.pause_control.paused  # no file: --stop does not end the VM
    finally:
        machine.request_exit(exitcodes.INTERRUPTED, "test over")
        runner.join(timeout=30)
        machine.close()
