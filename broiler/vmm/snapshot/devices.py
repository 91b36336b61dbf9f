"""The device side of a snapshot: every device's register state, and the registrations it implies.

The contract between the snapshot writer/reader (the KVM side: vCPUs, irqchip, PIT, clock, memory, the
file) and the devices:

- ``save_devices(machine)`` is called with every vCPU parked and the event loop held (core/pause.py). It
  returns a JSON-able tree: dicts with str keys, lists, int, str, bool, None, and ``bytes`` (the file
  format encodes bytes itself). Keys name devices stably: the same ``MachineConfig`` rebuilds the same
  devices under the same keys.
- ``restore_devices(machine, state)`` is called on a freshly built ``Machine`` (same configuration) after
  guest memory, the VM state and the vCPU state are back, before the event loop and the vCPU threads start.
  It puts every device's registers back and re-creates what they imply: BARs where the guest moved them
  (bus regions and their ioeventfd doorbells), MSI/MSI-X routes, interrupt line levels, pending async work
  (re-armed on the event loop, which runs it once it starts). A state that does not fit the machine (a key
  missing or foreign, a value of the wrong shape) raises ``SnapshotError`` naming the device.
"""

from __future__ import annotations

from typing import Any

from ...errors import SnapshotError  # noqa: F401  (raised by restore_devices once filled in)


def save_devices(machine: Any) -> dict[str, Any]:
    """Every device's state, keyed by a stable device name (skeleton: filled in by the device work)."""
    return {}


def restore_devices(machine: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from ``save_devices``) back into ``machine``'s devices (skeleton)."""
    return None
