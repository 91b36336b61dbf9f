"""Take a snapshot of a running Machine, and build a Machine from one (docs/snapshot.md, docs/api.md).

``take_snapshot(machine, path)`` pauses the VM (core/pause.py) if it runs, writes the file, and resumes it
unless ``stop``. ``restore_machine(path)`` returns a Machine ready for ``run()``: built from the snapshot's
configuration, its RAM a private mapping of the file, every vCPU and in-kernel device put back, the devices
given their state (devices.py), the loader's exit handlers re-made.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ... import __version__
from ...core.memory import FileBacking, MemoryMap
from ...errors import KvmError, SnapshotError
from ...kvm.state import msr_index_list
from ..machine import Machine
from ..userdev import check_user_work_saved
from . import cpu
from .devices import restore_devices, save_devices
from .format import PREFIX_SIZE, Layout, read_state, write_atomically
from .pages import verify_memory, write_memory
from .setup import config_from_state, config_state, loader_state, restore_loader

KIND = "broiler-snapshot"
_MISFIT = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)
# One snapshot at a time: a second one, started while the first writes, would find the VM paused and the
# first would resume it under the second's feet.
_one_at_a_time = threading.Lock()


@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    apparent_size: int  # bytes, holes included (about the guest's RAM)
    disk_size: int  # bytes the file occupies on disk
    seconds: float  # wall time from the pause to the file in place (the VM was paused that long)


def take_snapshot(machine: Machine, path: str, *, stop: bool = False) -> SnapshotInfo:
    """Write ``machine`` to ``path`` atomically; then resume it (or end it with ``stop``)."""
    with _one_at_a_time:
        return _take(machine, path, stop)


def _take(machine: Machine, path: str, stop: bool) -> SnapshotInfo:
    if machine.pause_control.state.suspended:
        # Its vCPUs are parked mid-sleep (vmm/sleep.py) and the wake-up is not part of the state: restored,
        # the guest would run on after its sleep write as if it had never slept.
        raise SnapshotError("the VM is suspended (S3): wake it first (broiler wakeup NAME), then snapshot it")
    started = time.monotonic()
    paused_here = machine.pause_control.pause()
    try:
        if machine.threads:
            machine.threads[0].drain_coalesced()  # the ring's writes belong to the devices' state
        machine.loop.run_sync(machine.doorbells.deliver_held)  # so do kicks caught just before the pause
        check_user_work_saved(machine)  # paused: no user timer fires while we look (a kick above may add one)
        mem_len = 0
        regions: list[dict[str, Any]] = []

        def fill(fd: int) -> Layout:
            nonlocal mem_len, regions
            mem_len, regions = write_memory(machine.memory, fd, PREFIX_SIZE)
            return Layout(PREFIX_SIZE, mem_len, PREFIX_SIZE + mem_len, 0)

        disk_size = write_atomically(path, fill, lambda: _state(machine, regions))
    except BaseException:
        if paused_here:  # no snapshot: the VM goes on as it was, even with --stop
            machine.pause_control.resume()
        raise
    if stop:
        machine.request_exit(0, f"stopped after a snapshot to {path}")
    elif paused_here:
        machine.pause_control.resume()
    apparent = os.stat(path).st_size
    return SnapshotInfo(path, apparent, disk_size, time.monotonic() - started)


def _state(machine: Machine, regions: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        indices = msr_index_list(machine.kvm)
        vcpus = [cpu.save_vcpu(machine.kvm, v, indices) for v in machine.vcpus]
        vm = cpu.save_vm(machine.vm, machine.config.irqchip)
    except KvmError as exc:
        raise SnapshotError(f"cannot save the VM's state: {exc}") from None
    for saved in vcpus:
        cpu.report_refused("read", saved["id"], saved["msrs_refused"])
    return {
        "kind": KIND,
        "broiler": __version__,
        "created": time.time(),
        "config": config_state(machine.config),
        "loader": loader_state(machine),
        "vcpus": vcpus,
        "vm": vm,
        "memory": {"regions": regions},
        "devices": save_devices(machine),
    }


def restore_machine(
    path: str,
    *,
    disk_paths: Mapping[str, str] | None = None,
    verify: bool = False,
    serial_output: Callable[[bytes], None] | None = None,
    virtio_console: Callable[[bytes], None] | None = None,
) -> Machine:
    """A Machine rebuilt from the snapshot at ``path``, not yet running. ``disk_paths`` re-points disks
    (old path -> new); ``verify`` reads all saved memory back and checks its CRCs first."""
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed below; the mapping keeps its own reference
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path!r}: {exc.strerror}") from None
    with f, _malformed(path):
        layout, state = read_state(f, path)
        if state.get("kind") != KIND:
            raise SnapshotError(f"{path}: not a broiler snapshot (kind {state.get('kind')!r})")
        config = config_from_state(state["config"], path, disk_paths=disk_paths or {}, virtio_console=virtio_console)
        config.serial_output = serial_output
        regions = state["memory"]["regions"]
        _check_regions(regions, layout, config.mem_size, path)
        if verify:
            verify_memory(f.fileno(), regions, path)
        config.memory_backing = FileBacking(os.dup(f.fileno()), tuple(int(r["file_offset"]) for r in regions))
    try:
        machine = Machine(config)
    except KvmError as exc:
        raise SnapshotError(
            f"{path}: this host cannot build the snapshot's machine ({config.cpus} vCPUs): {exc}"
        ) from None
    try:
        with _malformed(path):
            _restore_into(machine, state, path)
    except BaseException:
        machine.close()
        raise
    return machine


@contextlib.contextmanager
def _malformed(path: str) -> Iterator[None]:
    """A state whose CRC is right but whose shape is not (a crafted file): one line, never a traceback."""
    try:
        yield
    except _MISFIT as exc:
        raise SnapshotError(f"{path}: the snapshot's state is malformed ({type(exc).__name__}: {exc})") from None


def _check_regions(regions: list[dict[str, Any]], layout: Layout, mem_size: int, path: str) -> None:
    """Each region where the writer puts it: back to back from the memory area's start, in RAM order."""
    ram = [r.size for r in MemoryMap(mem_size).ram]
    if [int(r["size"]) for r in regions] != ram or layout.mem_len != mem_size:
        raise SnapshotError(f"{path}: the snapshot's memory does not match its RAM size")
    expected = layout.mem_offset
    for r in regions:
        if int(r["file_offset"]) != expected:
            raise SnapshotError(f"{path}: the snapshot's memory regions are inconsistent")
        expected += int(r["size"])


def _restore_into(machine: Machine, state: dict[str, Any], path: str) -> None:
    vcpus = state["vcpus"]
    if len(vcpus) != len(machine.vcpus):
        raise SnapshotError(f"{path}: {len(vcpus)} vCPU states for a machine of {len(machine.vcpus)}")
    cpu.check_cpuid(machine.kvm, machine.vcpus[0], vcpus[0]["cpuid"], path)
    restore_loader(machine, state["loader"])
    try:
        cpu.restore_vm(machine.vm, state["vm"])
        for vcpu, saved in zip(machine.vcpus, vcpus, strict=True):
            cpu.report_refused("set", vcpu.id, cpu.restore_vcpu(machine.kvm, vcpu, saved))
    except KvmError as exc:
        raise SnapshotError(f"{path}: this host's KVM does not take the snapshot's state: {exc}") from None
    restore_devices(machine, state["devices"])
