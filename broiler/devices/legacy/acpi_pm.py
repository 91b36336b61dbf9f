"""The ACPI PM1a event and control blocks our FADT points at (ports 0x600-0x605; broiler/boot/acpi.py).

Linux powers off by writing SLP_TYP (bits 12:10) for S5 together with SLP_EN (bit 13) to PM1a_CNT.
Our DSDT's \\_S5 package says SLP_TYP = 5. Any other write is stored; reads give what was stored
(PM1a_STS and PM1a_EN read 0 until written: no fixed events are ever raised).
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.bus import Device, all_ones

PM1A_EVT = 0x600  # status (2 bytes) + enable (2 bytes)
PM1A_CNT = 0x604  # control (2 bytes)
PM_BLOCK_SIZE = 6
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
S5_SLP_TYP = 5


class AcpiPm(Device):
    name = "acpi-pm"
    state_fields = ("regs",)

    def __init__(self, power_off: Callable[[], None]) -> None:
        super().__init__()
        self._power_off = power_off
        self.regs = bytearray(PM_BLOCK_SIZE)

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
            return
        self.regs[offset : offset + size] = data[: PM_BLOCK_SIZE - offset]
        control = int.from_bytes(self.regs[4:6], "little")
        if control & SLP_EN and (control >> SLP_TYP_SHIFT) & 7 == S5_SLP_TYP:
            self.regs[4:6] = (control & ~SLP_EN).to_bytes(2, "little")
            self._power_off()
