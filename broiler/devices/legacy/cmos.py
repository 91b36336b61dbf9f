"""The CMOS RTC and NVRAM at ports 0x70 (index) / 0x71 (data), as a PC has it.

Time registers read the host's current UTC time in BCD, 24-hour mode (register B = 0x02); register D
reports valid time (0x80). Writes to the time registers are accepted and ignored (the clock follows the
host). Other registers are 128 bytes of NVRAM; the memory-size bytes a BIOS leaves there are filled in
from the guest's RAM size.

Register A's update-in-progress bit (UIP) is set in the last UIP_WINDOW_NS of every second of the device
clock (244 us before the update plus the update's 1984 us, as the MC146818 datasheet has it), so a guest
that waits for an update -- UIP set, then clear, as kvm-unit-tests' s3 test does before arming its alarm --
sees one. The device clock's seconds (core/clock.py: monotonic, recorded and replayed) are not aligned with
the UTC seconds the time registers show: after UIP falls the seconds register changes within a second, not
right then.

The alarm (registers 1, 3, 5; 0xC0-0xFF = "don't care") is only a wake source: while the machine is
suspended (S3, vmm/sleep.py) ``seconds_to_alarm(now)`` says when it matches the host's UTC time, if
register B's AIE is set. The
wake then resets the RTC as QEMU's reset does (``reset``: AIE and the flags cleared), so the guest finds
register C empty, as under QEMU. Register C is read-to-clear, but nothing sets its flags: no periodic,
alarm or update-ended interrupt is raised on IRQ 8 while the guest runs (Linux does not need them to boot).
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
ALARM_SECONDS, ALARM_MINUTES, ALARM_HOURS = 0x01, 0x03, 0x05
REG_A_UIP = 0x80
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE, REG_B_SQWE, REG_B_BINARY = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04
UIP_WINDOW_NS = 2_228_000  # 244 us + 1984 us
SECOND_NS = 1_000_000_000
DAY = 86400


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


class Cmos(Device):
    name = "rtc-cmos"
    # The time registers are not saved: they read the host's clock, before and after a restore alike.
    state_fields = ("index:7", "nmi_disabled", "nvram")

    def __init__(
        self, ram_size: int = 0, clock: object = time.gmtime, phase_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        super().__init__()
        self.index = 0
        self.nmi_disabled = False
        self.nvram = bytearray(128)
        self.nvram[REG_A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.nvram[REG_B] = 0x02  # 24-hour mode, BCD
        self.nvram[REG_D] = 0x80  # valid RAM and time
        self._clock = clock
        self._phase_ns = phase_ns  # nanoseconds on the device clock: where in its second UIP is
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
            flags, self.nvram[REG_C] = self.nvram[REG_C], 0  # reading C acknowledges its flags
            return flags
        if (
            reg == REG_A
            and not self.nvram[REG_B] & REG_B_SET
            and self._phase_ns() % SECOND_NS >= SECOND_NS - UIP_WINDOW_NS
        ):
            return self.nvram[REG_A] | REG_A_UIP
        return self.nvram[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.nmi_disabled = bool(value & 0x80)
            self.index = value & 0x7F
            return
        if self.index in TIME_REGS or self.index in (REG_C, REG_D, CENTURY):
            return  # the clock follows the host; C and D are read-only
        self.nvram[self.index] = value & (0x7F if self.index == REG_A else 0xFF)  # UIP is read-only

    def _alarm_field(self, reg: int) -> int | None:
        """An alarm register's value in binary; None for "don't care" (the two top bits set)."""
        raw = self.nvram[reg]
        if raw & 0xC0 == 0xC0:
            return None
        return raw if self.nvram[REG_B] & REG_B_BINARY else (raw >> 4) * 10 + (raw & 0xF)

    def seconds_to_alarm(self, now: float) -> float | None:
        """Seconds from ``now`` (UTC seconds since the epoch) until the alarm next matches the clock (at a
        whole second), or None when AIE is clear or the alarm can never match (e.g. hour 25). 24-hour mode
        only. The caller passes the time: the wake is the machine's business, not a guest read."""
        if not self.nvram[REG_B] & REG_B_AIE:
            return None
        whole = int(now)
        want = [self._alarm_field(reg) for reg in (ALARM_HOURS, ALARM_MINUTES, ALARM_SECONDS)]
        for ahead in range(1, DAY + 1):  # at most a day: every alarm that can match does so within one
            hours, rest = divmod((whole + ahead) % DAY, 3600)
            got = (hours, *divmod(rest, 60))
            if all(w is None or w == g for w, g in zip(want, got, strict=True)):
                return ahead - (now - whole)
        return None

    def reset(self) -> None:
        """A platform reset (the S3 wake is one): the MC146818's RESET clears the interrupt enables PIE,
        AIE, UIE and SQWE in register B and every flag in register C; time, alarm and NVRAM stay."""
        self.nvram[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE) & 0xFF
        self.nvram[REG_C] = 0
