"""What the PCI models need from the rest of the VMM besides interrupts and timers.

Interrupts and timers have one type each for every device, defined in ``broiler.core``:
``IrqLine``, ``MsiMessage`` and ``MsiSink`` (``broiler/core/irq.py``), ``Schedule``
(``broiler/core/eventloop.py``). What is PCI's own is the doorbell registry the host maps BAR
doorbells into:

- ``Doorbells``: registers a write-only doorbell (a KVM ioeventfd) at an absolute port or guest-physical
  address. KVM catches only guest writes of exactly ``length`` bytes at ``addr`` (and, with
  ``datamatch``, only that value); ``callback(kicks)`` then runs on the event-loop thread with the
  number of writes coalesced since the last call. Every other access still reaches the device through
  its bus, so a device's own ``write()`` at the doorbell offset rings the same handler. ``add`` may
  raise ``BroilerError`` (for example KvmError); the host then logs it and relies on that write path.
  ``broiler/core/ioeventfd.py::Doorbells`` is the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

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
