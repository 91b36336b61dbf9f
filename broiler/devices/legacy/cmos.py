"""The CMOS RTC and NVRAM at ports 0x70 (index) / 0x71 (data), as a PC has it.

Time registers read the host's current UTC time in BCD, 24-hour mode (register B = 0x02); the
update-in-progress bit is never set; register D reports valid time (0x80). Writes to the time
registers are accepted and ignored (the clock follows the host). Other registers are 128 bytes of
NVRAM; the memory-size bytes a BIOS leaves there are filled in from the guest's RAM size. No
periodic or alarm interrupts (Linux does not need them to boot).
"""

from __future__ import annotations

import time

from ...core.bus import Device

CMOS_INDEX = 0x70
CMOS_SIZE = 2
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
TIME_REGS = {
    0x00: "tm_sec",
    0x02: "tm_min",
    0x04: "tm_hour",
    0x06: "tm_wday",
    0x07: "tm_mday",
    0x08: "tm_mon",
    0x09: "tm_year",
}
CENTURY = 0x32


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


class Cmos(Device):
    name = "rtc-cmos"
    # The time registers are not saved: they read the host's clock, before and after a restore alike.
    state_fields = ("index:7", "nmi_disabled", "nvram")

    def __init__(self, ram_size: int = 0, clock: object = time.gmtime) -> None:
        super().__init__()
        self.index = 0
        self.nmi_disabled = False
        self.nvram = bytearray(128)
        self.nvram[REG_A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.nvram[REG_B] = 0x02  # 24-hour mode, BCD
        self.nvram[REG_D] = 0x80  # valid RAM and time
        self._clock = clock
        kib_above_1m = max(0, min(ram_size, 0xC000_0000) - (1 << 20)) // 1024
        above_16m = max(0, min(ram_size, 0xC000_0000) - (16 << 20)) // (64 << 10)
        for reg, value in (
            (0x17, min(kib_above_1m, 0xFFFF)),
            (0x30, min(kib_above_1m, 0xFFFF)),
            (0x34, min(above_16m, 0xFFFF)),
        ):
            self.nvram[reg], self.nvram[reg + 1] = value & 0xFF, value >> 8
        self.nvram[0x15], self.nvram[0x16] = 640 & 0xFF, 640 >> 8

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        reg = self.index
        if reg in TIME_REGS or reg == CENTURY:
            now = self._clock()  # type: ignore[operator]
            if reg == CENTURY:
                return _bcd(now.tm_year // 100)
            value = getattr(now, TIME_REGS[reg])
            if reg == 0x06:
                value = (now.tm_wday + 1) % 7 + 1  # Sunday = 1
            elif reg == 0x09:
                value %= 100
            return _bcd(value)
        if reg == REG_C:
            return 0  # no interrupt flags pending
        return self.nvram[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.nmi_disabled = bool(value & 0x80)
            self.index = value & 0x7F
            return
        if self.index in TIME_REGS or self.index in (REG_C, REG_D, CENTURY):
            return  # the clock follows the host; C and D are read-only
        self.nvram[self.index] = value & 0xFF
