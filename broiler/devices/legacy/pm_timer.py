"""The ACPI power-management timer (ACPI 6.4 §4.8.3.3) at the FADT's PM_TMR_BLK, port 0x608.

A free-running 24-bit up-counter at 3.579545 MHz, read-only: the FADT leaves TMR_VAL_EXT clear, as
QEMU's PIIX4 does, so bits 31:24 read 0 and the count wraps every 2^24 ticks (about 4.7 s). It is derived
from a monotonic clock (nanoseconds; injectable for tests) rather than counted, so it costs nothing
while nobody reads it and never drifts from host time. No overflow event (TMR_STS) is raised: nothing
enables the SCI for it.

Reads of 1, 2 or 4 bytes at any offset inside the register return those bytes of the count (QEMU's
port accepts them too); writes are ignored and counted as guest errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...core.bus import Device, all_ones
from ...core.state import check_keys, take_int

PM_TIMER_PORT = 0x608
PM_TIMER_SIZE = 4
PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFF_FFFF  # 24 bits
_NS_PER_S = 1_000_000_000


class PmTimer(Device):
    name = "acpi-pm-timer"

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__()
        self._clock_ns = clock_ns
        self._start_ns = clock_ns()

    def count(self) -> int:
        """The 24-bit counter value now: ticks since the device was made, wrapped."""
        return (self._clock_ns() - self._start_ns) * PM_TIMER_HZ // _NS_PER_S & PM_TIMER_MASK

    def save_state(self) -> dict[str, Any]:
        return {"count": self.count()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Count on from the saved value: the host's clock since the snapshot does not show."""
        count = take_int(check_keys(state, ("count",), self.name), "count", self.name, 24)
        self._start_ns = self._clock_ns() + (-count * _NS_PER_S // PM_TIMER_HZ)  # rounded up: count() == count

    def read(self, offset: int, size: int) -> int:
        return (self.count() >> (8 * offset)) & all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.guest_error(f"{size}-byte write to the read-only PM timer at +{offset}")
