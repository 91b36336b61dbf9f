"""broiler's public API: the names a device author and a script use (docs/api.md).

These names, with the signatures and behaviour docs/api.md gives them, follow semantic versioning from
0.1: within 0.x a minor release may break them only with a note in docs/api.md's changelog; from 1.0 only a
major release may. Everything else in the package is private and may change in any release.

This module sits at the top layer (it re-exports from ``broiler.vmm`` and ``broiler.frontend``), so
``import broiler`` stays cheap: only ``from broiler.api import ...`` loads the machine.
"""

from __future__ import annotations

from . import exitcodes
from .core.bus import Device, all_ones
from .core.irq import IrqLine, MsiMessage
from .core.memory import GuestMemory
from .devices.doorbell_engine import DoorbellEngine, Run
from .errors import BroilerError, ConfigError, GuestMemoryError, KvmUnavailable, SnapshotError
from .frontend.report import device_rows as device_stats
from .guests import packaged_guest
from .pci import BarDoorbell, BarKind, PciFunction
from .vmm.linux import load_linux
from .vmm.machine import Machine, MachineConfig
from .vmm.snapshot.api import SnapshotInfo, restore_machine, take_snapshot
from .vmm.userdev import DeviceContext

__all__ = [
    "BarDoorbell",
    "BarKind",
    "BroilerError",
    "ConfigError",
    "Device",
    "DeviceContext",
    "DoorbellEngine",
    "GuestMemory",
    "GuestMemoryError",
    "IrqLine",
    "KvmUnavailable",
    "Machine",
    "MachineConfig",
    "MsiMessage",
    "PciFunction",
    "Run",
    "SnapshotError",
    "SnapshotInfo",
    "all_ones",
    "device_stats",
    "exitcodes",
    "load_linux",
    "packaged_guest",
    "restore_machine",
    "take_snapshot",
]
