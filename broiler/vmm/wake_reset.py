"""The device side of an S3 wake, without KVM: what the machine does to its devices when it wakes (vmm/sleep.py),
and what `broiler replay` does where a recording says the machine woke (vmm/replay.py), so both apply the same
resets at the same point.

- PM1: everything zero, then WAK_STS (and RTC_STS when the RTC alarm woke the machine), as QEMU leaves it;
- the CMOS RTC: its interrupt enables and flags cleared (time, alarm and NVRAM kept);
- the HPET: back as it was made (halted, comparators all ones, nothing armed), through its snapshot state,
  taken when this object is made -- so make it before the guest runs.

``wake`` brackets the resets as a cause for an observer (``--record``): the clock reads and interrupt changes
the resets make are filed under it, and replay feeds and compares them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.bus import Device
from ..core.observe import Observer
from ..devices.legacy.acpi_pm import AcpiPm
from ..devices.legacy.cmos import Cmos
from ..devices.legacy.hpet import Hpet


class WakeReset:
    def __init__(self, pm: AcpiPm | None, rtc: Cmos | None, devices: Sequence[Device]) -> None:
        self.pm, self.rtc = pm, rtc
        self._fresh: list[tuple[Device, dict[str, Any]]] = [(d, d.save_state()) for d in devices if isinstance(d, Hpet)]

    def wake(self, *, by_rtc: bool, observer: Observer | None) -> None:
        """The resets, told to ``observer`` (if any) as one cause."""
        if observer is None:
            self.apply(by_rtc=by_rtc)
            return
        observer.begin()
        try:
            observer.wake(by_rtc)
            self.apply(by_rtc=by_rtc)
        finally:
            observer.end()

    def apply(self, *, by_rtc: bool) -> None:
        if self.pm is not None:
            self.pm.reset()
            self.pm.woke(by_rtc=by_rtc)
        if self.rtc is not None:
            self.rtc.reset()
        for device, state in self._fresh:
            device.load_state(state)
