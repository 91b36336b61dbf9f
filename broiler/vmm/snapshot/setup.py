"""What a snapshot carries besides CPU, memory and device state: the machine's configuration and the loader's
decisions that still matter after boot (the syscall assist and its pages, the instruction completer).

``broiler run --restore FILE`` rebuilds the machine from these alone (docs/snapshot.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ...devices.virtio.pci import TransportKind
from ...emulate.kvm_cpu import install_instruction_completer
from ...errors import SnapshotError
from ..config import MachineConfig
from ..userdev import parse_device_spec
from ..virtio import DiskSpec


def _disk_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise SnapshotError(f"cannot snapshot disk {path!r}: {exc.strerror}") from None


def config_state(config: MachineConfig) -> dict[str, Any]:
    """The configuration as JSON-able data; disks by absolute path with their size now."""
    return {
        "mem_size": config.mem_size,
        "cpus": config.cpus,
        "demo_devices": config.demo_devices,
        "irqchip": config.irqchip,
        "async_delay": config.async_delay,
        "testdev": config.testdev,
        "hpet": config.hpet,
        "disks": [
            {
                "path": os.path.abspath(d.path),
                "read_only": d.read_only,
                "serial": d.serial,
                "size": _disk_size(d.path),
            }
            for d in config.disks
        ],
        "virtio_rng": config.virtio_rng,
        "virtio_console": config.virtio_console is not None,
        "virtio_transport": config.virtio_transport.value,
        "devices": [spec.text for spec in config.devices],
    }


def _disk(saved: Mapping[str, Any], moved: Mapping[str, str], path: str) -> DiskSpec:
    old = saved["path"]
    where = moved.get(old, old)
    try:
        size = os.stat(where).st_size
    except OSError as exc:
        hint = "" if old in moved else f" (moved? give --disk-path {old}=NEW)"
        raise SnapshotError(f"{path}: the snapshot's disk {where!r} is not usable: {exc.strerror}{hint}") from None
    if size != saved["size"]:
        raise SnapshotError(f"{path}: the snapshot's disk {where!r} is {size} bytes now, {saved['size']} when saved")
    return DiskSpec(where, read_only=saved["read_only"], serial=saved["serial"])


def config_from_state(
    saved: Mapping[str, Any],
    path: str,
    *,
    disk_paths: Mapping[str, str],
    virtio_console: Callable[[bytes], None] | None,
) -> MachineConfig:
    """The MachineConfig a snapshot was taken with; its disks checked (present, same size) and re-pointed."""
    try:
        config = MachineConfig(
            mem_size=int(saved["mem_size"]),
            cpus=int(saved["cpus"]),
            demo_devices=bool(saved["demo_devices"]),
            irqchip=bool(saved["irqchip"]),
            async_delay=float(saved["async_delay"]),
            testdev=bool(saved["testdev"]),
            hpet=saved["hpet"],
            virtio_rng=bool(saved["virtio_rng"]),
            virtio_transport=TransportKind(saved["virtio_transport"]),
        )
        unknown = set(disk_paths) - {d["path"] for d in saved["disks"]}
        if unknown:
            raise SnapshotError(f"{path}: --disk-path {sorted(unknown)[0]}: the snapshot has no disk at that path")
        config.disks = [_disk(d, disk_paths, path) for d in saved["disks"]]
        config.devices = [parse_device_spec(text) for text in saved["devices"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path}: the snapshot's machine configuration is incomplete ({exc!r})") from None
    if saved["virtio_console"]:
        config.virtio_console = virtio_console or _stdout
    return config


def _stdout(data: bytes) -> None:
    import sys

    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def loader_state(machine: Any) -> dict[str, Any]:
    """The loader's decisions and what the syscall assist holds (its pages, the LSTAR each vCPU asked for)."""
    assist = machine.syscall_assist
    return {
        "guest_name": machine.guest_name,
        "decisions": machine.decisions,
        "syscall_assist": None
        if assist is None
        else {
            "spare_pages": list(assist.spare_pages),
            "lstar": [[vcpu, value] for vcpu, value in assist.lstar.items()],
            "pages_used": assist._used,
            "syscalls": assist.syscalls,
        },
    }


def restore_loader(machine: Any, saved: Mapping[str, Any]) -> None:
    """Re-make what the loader set up around the guest: exit handlers, the MSR filter, the completer."""
    machine.guest_name = f"{saved['guest_name']} (restored)"
    for key, value in saved["decisions"].items():
        machine.decisions[key] = dict(value)
    assist_state = saved["syscall_assist"]
    if assist_state is not None:
        assist = machine.enable_syscall_assist(assist_state["spare_pages"])
        assist.lstar.update({int(vcpu): int(value) for vcpu, value in assist_state["lstar"]})
        assist._used = int(assist_state["pages_used"])  # the pages the trampoline's tables already took
        assist.syscalls = int(assist_state["syscalls"])
    completer = saved["decisions"].get("emulate_missing", {})
    if completer.get("enabled"):
        install_instruction_completer(machine.exits, machine.memory, machine.decisions, "on")
        machine.decisions["emulate_missing"] = dict(completer)  # keep the original reason
