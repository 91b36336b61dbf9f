"""The ACPI PM timer against an injected clock: rate, 24-bit wrap, byte reads, read-only."""

from __future__ import annotations

from broiler.devices.legacy.pm_timer import PM_TIMER_HZ, PM_TIMER_MASK, PmTimer


class Clock:
    def __init__(self, ns: int = 123_456_789) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def test_counts_at_3_579545_mhz_from_zero() -> None:
    clock = Clock()
    timer = PmTimer(clock)
    assert timer.read(0, 4) == 0
    clock.ns += 1_000_000  # 1 ms
    assert timer.read(0, 4) == 3579  # floor(3579.545)
    clock.ns += 999_000_000  # 1 s in all
    assert timer.read(0, 4) == PM_TIMER_HZ


def test_wraps_at_24_bits_and_bits_31_24_read_zero() -> None:
    clock = Clock(0)
    timer = PmTimer(clock)
    wrap_ns = (PM_TIMER_MASK + 1) * 1_000_000_000 // PM_TIMER_HZ + 1  # just past 2^24 ticks
    clock.ns = wrap_ns
    value = timer.read(0, 4)
    assert value < 16 and value >> 24 == 0
    clock.ns = wrap_ns - 2_000  # 2 us before: close to the top of the range
    assert PM_TIMER_MASK - 16 < timer.read(0, 4) <= PM_TIMER_MASK


def test_byte_and_word_reads_give_those_bytes_of_the_count() -> None:
    clock = Clock(0)
    timer = PmTimer(clock)
    clock.ns = 0x123456 * 1_000_000_000 // PM_TIMER_HZ + 1
    count = timer.read(0, 4)
    assert count == 0x123456
    assert [timer.read(i, 1) for i in range(4)] == [0x56, 0x34, 0x12, 0]
    assert timer.read(0, 2) == 0x3456 and timer.read(2, 2) == 0x12


def test_writes_are_ignored_and_counted() -> None:
    clock = Clock(0)
    timer = PmTimer(clock)
    clock.ns = 10_000_000
    before = timer.read(0, 4)
    timer.write(0, 4, 0)
    assert timer.read(0, 4) == before and timer.guest_errors == 1
