"""What every virtio device model provides to a transport, and what a transport hands back to it.

A device (block, entropy, console) owns its feature bits, its configuration bytes and the processing
of its queues. It never sees registers, PCI or interrupts lines: the transport activates it with the
negotiated features, the activated queues, guest memory and a ``Notifier`` through which it reports
used buffers (``queue_used``) or a broken ring (``needs_reset``). Both may be called from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

from ...core.state import load_fields, save_fields
from .chain import Memory
from .queue import Virtqueue
from .spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, bit

COMMON_FEATURES = bit(F_VERSION_1) | bit(F_RING_INDIRECT_DESC) | bit(F_RING_EVENT_IDX)


class Notifier(Protocol):
    """The transport side of a device's completions."""

    def queue_used(self, queue_index: int) -> None:
        """Used elements were pushed on queue ``queue_index``: interrupt the driver if it wants one."""
        ...

    def needs_reset(self, reason: str) -> None:
        """The driver broke the rules: set DEVICE_NEEDS_RESET and stop using the device."""
        ...


@dataclass(slots=True)
class DeviceStats:
    """Per-device counters, shown next to the other devices' stats."""

    kicks: int = 0
    requests: int = 0
    bytes_read: int = 0  # from the backend into guest memory (the guest's reads)
    bytes_written: int = 0  # from guest memory into the backend (the guest's writes)
    errors: int = 0  # requests failed (IOERR/UNSUPP) and rings refused

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class VirtioDevice:
    """Base class: override the class attributes and the hooks."""

    device_type = 0
    name = "virtio"
    queue_max_sizes: tuple[int, ...] = (256,)
    # What a snapshot saves beyond the transport and queues (core/state.py); None = not declared.
    state_fields: ClassVar[tuple[str, ...] | None] = None

    def __init__(self) -> None:
        self.stats = DeviceStats()
        self.features = 0  # negotiated, set by activate

    def device_features(self) -> int:
        """Device-specific feature bits offered (the transport adds the common ring bits)."""
        return 0

    def config(self) -> bytes:
        """The device configuration structure (little-endian, as the guest reads it)."""
        return b""

    def extra_stats(self) -> dict[str, int]:
        """Device-specific counters shown next to ``stats`` (a console's dropped bytes, say)."""
        return {}

    def write_config(self, offset: int, data: bytes) -> bool:
        """A driver write into the configuration structure; False if that field is read-only."""
        return False

    def activate(self, memory: Memory, queues: list[Virtqueue], notifier: Notifier, features: int) -> None:
        """DRIVER_OK: start serving ``queues`` (only the ones the driver enabled are active)."""
        self.features = features

    def notify(self, queue_index: int) -> None:
        """The driver kicked queue ``queue_index`` (after DRIVER_OK only)."""

    def reset(self) -> None:
        """Stop all IO and forget the queues; returns once nothing of the guest's is in use."""
        self.features = 0

    def save_state(self) -> dict[str, Any]:
        """Device state beyond the queues, taken with the VM paused (called before the transport's)."""
        return save_fields(self, self.state_fields or ())

    def load_state(self, state: dict[str, Any]) -> None:
        """Called after the transport is back (and the device activated again, if it was)."""
        load_fields(self, self.state_fields or (), state, self.name)

    def close(self) -> None:
        """The VM is going away: release backends (files)."""
        self.reset()
