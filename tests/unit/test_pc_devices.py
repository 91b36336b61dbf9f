from __future__ import annotations

import time

from broiler.core.bus import PioBus
from broiler.devices.legacy.cmos import Cmos
from broiler.devices.legacy.i8042 import I8042
from tests.unit.fakes import FakeIrqLine


def _kbc() -> tuple[I8042, PioBus, list[int], list[tuple[int, int]]]:
    resets: list[int] = []
    irqs: list[tuple[int, int]] = []
    kbc = I8042(lambda: resets.append(1), FakeIrqLine(gsi=1, journal=irqs), FakeIrqLine(gsi=12, journal=irqs))
    bus = PioBus()
    bus.register(0x60, 1, kbc.data_port())
    bus.register(0x64, 1, kbc.command_port())
    return kbc, bus, resets, irqs


def test_i8042_self_test_and_config_byte() -> None:
    kbc, bus, _, _ = _kbc()
    assert bus.read(0x64, 1) & 0x01 == 0
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x01 and bus.read(0x60, 1) == 0x55
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x47)
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == 0x47


def test_i8042_keyboard_reset_and_identify_raise_irq1() -> None:
    kbc, bus, _, irqs = _kbc()
    bus.write(0x60, 1, 0xFF)
    assert (1, 1) in irqs
    assert [bus.read(0x60, 1), bus.read(0x60, 1)] == [0xFA, 0xAA]
    assert irqs[-1] == (1, 0)
    bus.write(0x60, 1, 0xF2)
    assert [bus.read(0x60, 1) for _ in range(3)] == [0xFA, 0xAB, 0x41]


def test_i8042_reset_command_reboots() -> None:
    _, bus, resets, _ = _kbc()
    bus.write(0x64, 1, 0xFE)
    assert resets == [1]


def test_cmos_time_is_bcd_utc() -> None:
    fixed = time.struct_time((2026, 11, 25, 13, 45, 59, 2, 329, 0))
    rtc = Cmos(32 << 20, clock=lambda: fixed)
    bus = PioBus()
    bus.register(0x70, 2, rtc)

    def reg(r: int) -> int:
        bus.write(0x70, 1, r)
        return bus.read(0x71, 1)

    assert (reg(0x00), reg(0x02), reg(0x04)) == (0x59, 0x45, 0x13)
    assert (reg(0x07), reg(0x08), reg(0x09), reg(0x32)) == (0x25, 0x11, 0x26, 0x20)
    assert reg(0x0B) == 0x02 and reg(0x0D) == 0x80
    bus.write(0x70, 1, 0x40)
    bus.write(0x71, 1, 0xAB)
    assert reg(0x40) == 0xAB
    assert reg(0x30) | reg(0x31) << 8 == (31 << 10)  # KiB above 1 MiB (capped at 0xFFFF for large guests)
