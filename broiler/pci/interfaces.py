"""What the PCI models need from the rest of the VMM, as minimal protocols.

The PCI package is sans-IO: it never issues an ioctl. The machine hands each piece in:

- ``IrqLine``: one interrupt line (a GSI) for INTx. ``set_level(1)``/``set_level(0)`` drive it (the
  machine turns that into KVM_IRQ_LINE); ``pulse()`` is an edge (0 then 1 then 0). PCI INTx is
  level-triggered, so the PCI code only uses ``set_level``.
- ``MsiSink``: ``sink(address, data)`` delivers one MSI message (KVM_SIGNAL_MSI, a route, or an irqfd).
- ``Doorbells``: registers a write-only doorbell (a KVM ioeventfd) at an absolute port or guest-physical
  address. KVM catches only guest writes of exactly ``length`` bytes at ``addr`` (and, with
  ``datamatch``, only that value); ``callback(kicks)`` then runs on the event-loop thread with the
  number of writes coalesced since the last call. Every other access still reaches the device through
  its bus, so a device's own ``write()`` at the doorbell offset rings the same handler. ``add`` may
  raise ``BroilerError`` (for example KvmError); the PCI code then logs it and relies on that write path.
- ``Schedule``: ``schedule(delay_seconds, fn)`` runs ``fn()`` once after the delay on the event-loop
  thread (or a timer thread) and returns a handle the caller may ignore. Devices never sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class IrqLine(Protocol):
    """One interrupt line (a GSI)."""

    @property
    def gsi(self) -> int: ...

    def set_level(self, level: int) -> None: ...

    def pulse(self) -> None: ...


MsiSink = Callable[[int, int], None]
"""``sink(address, data)``: deliver one MSI message."""

Schedule = Callable[[float, Callable[[], None]], object]
"""``schedule(delay_seconds, fn)``: call ``fn()`` once, later; returns an opaque handle."""

DoorbellCallback = Callable[[int], None]
"""``callback(kicks)``: the doorbell was written ``kicks`` times (>= 1)."""


@runtime_checkable
class Doorbells(Protocol):
    """ioeventfd-style doorbells, owned by the machine (one instance per VM)."""

    def add(
        self, *, pio: bool, addr: int, length: int, datamatch: int | None, callback: DoorbellCallback, owner: object
    ) -> object:
        """Start catching writes; returns a handle for ``remove``."""
        ...

    def remove(self, handle: object) -> None:
        """Stop catching writes for a handle returned by ``add``."""
        ...
