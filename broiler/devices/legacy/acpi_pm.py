"""The ACPI PM1a event and control blocks our FADT points at (ports 0x600-0x605; broiler/boot/acpi.py).

A write to PM1a_CNT with SLP_EN (bit 13) asks for the sleep state whose SLP_TYP (bits 12:10) it carries;
the DSDT advertises the values (\\_S3 = 1, \\_S5 = 5):

- SLP_TYP 5 (S5): power off -- how Linux powers off;
- SLP_TYP 1 (S3): suspend to RAM, as QEMU's PIIX4 numbers it (kvm-unit-tests' s3 test writes 0x2400
  literally). The machine parks the vCPUs and later resumes through the FACS waking vector
  (vmm/sleep.py); on wake it calls ``woke`` (WAK_STS, and RTC_STS for an RTC alarm, as QEMU sets them).

Other SLP_TYP values are stored and ignored. SLP_EN reads back 0 (a write-only bit). PM1a_STS is
write-1-to-clear; PM1a_EN is stored. Until the guest writes PM1a_EN the RTC alarm may wake the machine
(QEMU's rule: every wake reason starts enabled); after, only with RTC_EN (bit 10) set.
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.bus import Device, all_ones

PM1A_EVT = 0x600  # status (2 bytes) + enable (2 bytes)
PM1A_CNT = 0x604  # control (2 bytes)
PM_BLOCK_SIZE = 6
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
S3_SLP_TYP = 1  # QEMU's value (its DSDT: \_S3 = Package {1, 1, 0, 0})
S5_SLP_TYP = 5
WAK_STS = 1 << 15
RTC_STS = RTC_EN = 1 << 10


def _nothing() -> None:
    return None


class AcpiPm(Device):
    name = "acpi-pm"
    state_fields = ("regs", "enable_written")  # enable_written: PM1a_EN written since reset (RTC wake rule)

    def __init__(self, power_off: Callable[[], None], suspend: Callable[[], None] = _nothing) -> None:
        super().__init__()
        self._power_off = power_off
        self._suspend = suspend
        self.regs = bytearray(PM_BLOCK_SIZE)
        self.enable_written = False

    @property
    def rtc_wake_enabled(self) -> bool:
        return not self.enable_written or bool(int.from_bytes(self.regs[2:4], "little") & RTC_EN)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.regs[offset : offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        data = (value & all_ones(size)).to_bytes(size, "little")
        if offset < 4:  # PM1a_STS is write-1-to-clear
            for i, byte in enumerate(data):
                if offset + i < 2:
                    self.regs[offset + i] &= ~byte & 0xFF
                elif offset + i < PM_BLOCK_SIZE:
                    self.regs[offset + i] = byte
                    self.enable_written |= offset + i < 4
            return
        self.regs[offset : offset + size] = data[: PM_BLOCK_SIZE - offset]
        control = int.from_bytes(self.regs[4:6], "little")
        if not control & SLP_EN:
            return
        self.regs[4:6] = (control & ~SLP_EN).to_bytes(2, "little")
        sleep_type = (control >> SLP_TYP_SHIFT) & 7
        if sleep_type == S5_SLP_TYP:
            self._power_off()
        elif sleep_type == S3_SLP_TYP:
            self._suspend()

    def reset(self) -> None:
        """What a platform reset leaves: everything zero (QEMU's acpi_pm1_evt_reset / cnt_reset)."""
        self.regs[:] = bytes(PM_BLOCK_SIZE)
        self.enable_written = False

    def woke(self, *, by_rtc: bool) -> None:
        """After a resume from S3 (called after ``reset``): the status bits the wake leaves set."""
        status = WAK_STS | (RTC_STS if by_rtc else 0)
        self.regs[0:2] = (int.from_bytes(self.regs[0:2], "little") | status).to_bytes(2, "little")
