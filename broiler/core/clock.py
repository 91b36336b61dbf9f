"""Time as an input of the device model: the one clock every time-keeping device reads.

Devices that answer from time (the ACPI PM timer, the HPET's counter and deadlines, the CMOS RTC) get a
``DeviceClock`` handed to them instead of calling the host's clock themselves (sans-IO). That makes time an
input like a guest's access: ``--record`` writes down each value a device read (core/observe.py's
``Observer.clock``), and ``broiler replay`` hands the same values back, so a time-keeping device answers
offline exactly as it did in the run.

The monotonic reading is nanoseconds since the machine started its vCPUs, and 0 before that: devices
built before the run (and devices rebuilt by replay) all see the same starting time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Which reading an ``Observer.clock`` call is about (the address field of a recorded clock event).
MONOTONIC_NS = 0
UTC_SECONDS = 1


class DeviceClock:
    def __init__(
        self, host_ns: Callable[[], int] = time.monotonic_ns, host_utc: Callable[[], float] = time.time
    ) -> None:
        self._host_ns, self._host_utc = host_ns, host_utc  # the host's clocks (injectable for tests)
        self._origin_ns: int | None = None
        # (source, the host's value) -> the value the device gets: set by core/observe.attach_observer. The
        # recorder passes the value through and writes it down; replay substitutes the recorded one.
        self.hook: Callable[[int, int], int] | None = None

    def start(self) -> None:
        """Time begins (the machine starts its vCPUs); later calls change nothing."""
        if self._origin_ns is None:
            self._origin_ns = self._host_ns()

    def monotonic_ns(self) -> int:
        now = 0 if self._origin_ns is None else self._host_ns() - self._origin_ns
        hook = self.hook
        return now if hook is None else hook(MONOTONIC_NS, now)

    def utc_seconds(self) -> int:
        now = int(self._host_utc())
        hook = self.hook
        return now if hook is None else hook(UTC_SECONDS, now)

    def gmtime(self) -> time.struct_time:
        """The calendar time now, UTC (what an RTC shows)."""
        return time.gmtime(self.utc_seconds())
