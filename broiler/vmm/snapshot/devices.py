"""The device side of a snapshot: every device's register state, and the registrations it implies.

The contract between the snapshot writer/reader (the KVM side: vCPUs, irqchip, PIT, clock, memory, the
file) and the devices:

- ``save_devices(machine)`` is called with every vCPU parked and the event loop held (core/pause.py). It
  returns a JSON-able tree: dicts with str keys, lists, int, str, bool, None, and ``bytes`` (the file
  format encodes bytes itself; ``jsonstate.py`` is that encoding). Keys name devices stably: the same
  ``MachineConfig`` rebuilds the same devices under the same keys.
- ``restore_devices(machine, state)`` is called on a freshly built ``Machine`` (same configuration) after
  guest memory, the VM state and the vCPU state are back, before the event loop and the vCPU threads start.
  It puts every device's registers back and re-creates what they imply: BARs where the guest moved them
  (bus regions and their ioeventfd doorbells), MSI/MSI-X routes, interrupt line levels, pending async work
  (re-armed on the event loop, which runs it once it starts). A state that does not fit the machine (a key
  missing or foreign, a value of the wrong shape) raises ``SnapshotError`` naming the device.

Which devices: every region on the port and MMIO buses that is not a PCI BAR, keyed
``"pio:<base>:<name>"``/``"mmio:<base>:<name>"`` (fixed addresses; a device on two regions, the i8042, is
saved once through its ``state_owner``), and every PCI function, keyed ``"pci:<slot>:<name>"`` (its BAR
handlers, MSI-X table and PBA, and a virtio function's transport, queues and device go with it). What each
device saves is its own ``save_state`` (core/state.py; docs/snapshot.md "Devices").

MSI routes through irqfd (core/irq.IrqfdMsiSink) are made on a message's first delivery, in the restored
machine as in a fresh one, from the restored MSI/MSI-X registers; the irqchip's pin state is the KVM
side's, and each device raises its level-triggered line again if its registers say it is asserted.
"""

from __future__ import annotations

from typing import Any

from ...core.bus import Region
from ...errors import SnapshotError
from ...pci import PciFunction

# Python errors a device's load_state could still raise on a state it did not foresee: reported like
# the ones it foresaw, as a snapshot that does not fit, never as a traceback.
_MISFIT = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError)


def _region_device(region: Region) -> Any:
    device = region.inner if region.inner is not None else region.device
    return getattr(device, "state_owner", device)


def device_table(machine: Any) -> dict[str, Any]:
    """Every device with state (or declared stateless) under its stable key, in a stable order."""
    table: dict[str, Any] = {}
    seen: set[int] = set()
    for kind, bus in (("pio", machine.pio_bus), ("mmio", machine.mmio_bus)):
        for region in bus.regions():
            if isinstance(region.owner, PciFunction):
                continue  # a BAR: saved with its function, restored where the function's BAR says
            device = _region_device(region)
            if id(device) not in seen:
                seen.add(id(device))
                table[f"{kind}:{region.base:#x}:{region.name}"] = device
    if machine.pci is not None:
        for slot, function in machine.pci.functions.items():
            table[f"pci:{slot:02x}:{function.name}"] = function
    return table


def save_devices(machine: Any) -> dict[str, Any]:
    """Every device's state, keyed by a stable device name."""
    return {key: device.save_state() for key, device in device_table(machine).items()}


def restore_devices(machine: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from ``save_devices``) back into ``machine``'s devices, then what it implies."""
    table = device_table(machine)
    if not isinstance(state, dict):
        raise SnapshotError(f"device state is a {type(state).__name__}, not a dict")
    missing = [key for key in table if key not in state]
    foreign = [key for key in state if key not in table]
    if missing or foreign:
        raise SnapshotError(
            "the snapshot's devices do not match this machine's"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(map(str, foreign))}" if foreign else "")
        )
    for key, device in table.items():
        try:
            device.load_state(state[key])
        except SnapshotError:
            raise
        except _MISFIT as exc:
            raise SnapshotError(f"{key}: saved state does not fit ({type(exc).__name__}: {exc})") from None
    if machine.pci is not None:
        machine.pci.retry_blocked()  # BARs that moved onto one another's old places, now all moved
        for function in machine.pci.functions.values():
            restart = getattr(function, "restart", None)
            if callable(restart):
                restart()
