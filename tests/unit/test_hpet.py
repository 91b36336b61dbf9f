"""The HPET model (broiler/devices/legacy/hpet.py) on a fake clock and a fake schedule: no KVM, no sleeping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from broiler.devices.legacy.hpet import (
    GCAP_ID,
    GEN_CONF,
    GINTR_STA,
    INT_ROUTE_CAP,
    MAIN_COUNTER,
    TN_32MODE,
    TN_INT_ENB,
    TN_INT_TYPE_LEVEL,
    TN_TYPE_PERIODIC,
    TN_VAL_SET,
    Hpet,
)
from tests.unit.fakes import FakeIrqLine

TN_ROUTE_23 = 23 << 9


@dataclass
class Pending:
    when_ns: int
    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTime:
    """A nanosecond clock and a schedule on it: ``advance`` moves time and runs what falls due, in order."""

    now: int = 1_000_000
    pending: list[Pending] = field(default_factory=list)

    def clock(self) -> int:
        return self.now

    def schedule(self, delay: float, fn: Callable[[], None]) -> Pending:
        entry = Pending(self.now + round(delay * 1e9), fn)
        self.pending.append(entry)
        return entry

    def live(self) -> list[Pending]:
        return [p for p in self.pending if not p.cancelled]

    def advance(self, ns: int) -> None:
        end = self.now + ns
        while due := sorted((p for p in self.live() if p.when_ns <= end), key=lambda p: p.when_ns):
            self.now = max(self.now, due[0].when_ns)
            self.pending.remove(due[0])
            due[0].fn()
        self.now = end


@pytest.fixture
def t() -> FakeTime:
    return FakeTime()


def make(t: FakeTime) -> tuple[Hpet, dict[int, FakeIrqLine]]:
    lines = {gsi: FakeIrqLine(gsi=gsi) for gsi in (2, 8, 23)}
    return Hpet(lines, t.schedule, t.clock), lines


def timer_reg(n: int, field: int) -> int:
    return 0x100 + 0x20 * n + field


def test_capabilities_are_qemus() -> None:
    hpet, _ = make(FakeTime())
    cap = hpet.read(GCAP_ID, 8)
    assert cap & 0xFF == 1 and (cap >> 8) & 0x1F == 2  # revision 1, three timers
    assert cap & (1 << 13) and cap & (1 << 15)  # 64-bit counter, legacy replacement
    assert (cap >> 16) & 0xFFFF == 0x8086 and cap >> 32 == 10_000_000  # 10 ns
    assert hpet.read(GCAP_ID + 4, 4) == 10_000_000
    conf = hpet.read(timer_reg(1, 0), 8)
    assert conf >> 32 == INT_ROUTE_CAP and conf & (1 << 4) and conf & (1 << 5)  # periodic and 64-bit capable


def test_counter_runs_at_100_mhz_only_while_enabled(t: FakeTime) -> None:
    hpet, _ = make(t)
    t.advance(1_000)
    assert hpet.read(MAIN_COUNTER, 8) == 0
    hpet.write(GEN_CONF, 4, 1)
    t.advance(1_000_000)  # 1 ms
    assert hpet.read(MAIN_COUNTER, 8) == 100_000
    hpet.write(GEN_CONF, 4, 0)
    t.advance(5_000_000)
    assert hpet.read(MAIN_COUNTER, 8) == 100_000


def test_counter_is_writable_only_while_halted(t: FakeTime) -> None:
    hpet, _ = make(t)
    hpet.write(MAIN_COUNTER + 4, 4, 0x12)
    hpet.write(MAIN_COUNTER, 4, 0x34)
    assert hpet.read(MAIN_COUNTER, 8) == 0x12_0000_0034
    hpet.write(GEN_CONF, 4, 1)
    t.advance(100)
    hpet.write(MAIN_COUNTER, 8, 0)
    assert hpet.read(MAIN_COUNTER, 8) == 0x12_0000_0034 + 10 and hpet.guest_errors == 1


def test_one_shot_fires_once_at_the_comparator(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_ENB | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 50_000)  # 500 us
    hpet.write(GEN_CONF, 4, 1)
    t.advance(499_990)
    assert lines[23].pulses == 0
    t.advance(10)
    assert lines[23].pulses == 1
    t.advance(10_000_000_000)
    assert lines[23].pulses == 1 and hpet.fired[0] == 1
    assert hpet.read(GINTR_STA, 8) == 0  # edge-triggered: no status
    assert len(t.live()) == 0  # a 64-bit one-shot has nothing more to schedule


def test_periodic_fires_every_period_and_skips_missed_ones(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(2, 0), 8, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_ROUTE_23)
    hpet.write(timer_reg(2, 8), 8, 100_000)  # first match and period: 1 ms
    hpet.write(GEN_CONF, 4, 1)
    t.advance(10_000_000)
    assert lines[23].pulses == 10
    assert hpet.read(timer_reg(2, 8), 8) == 1_100_000  # the next match
    assert len(t.live()) == 1  # one pending match per comparator


def test_a_tiny_period_cannot_flood_the_event_loop(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 1)  # a 10 ns period
    hpet.write(GEN_CONF, 4, 1)
    t.advance(1_000_000)  # 1 ms: at most one match per 10 us
    assert 50 <= lines[23].pulses <= 101


def test_periodic_comparator_write_without_val_set_changes_only_the_period(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 1_000)
    hpet.write(timer_reg(0, 8), 8, 2_000)  # VAL_SET was cleared: period only
    assert hpet.read(timer_reg(0, 8), 8) == 1_000 and not hpet.read(timer_reg(0, 0), 8) & TN_VAL_SET
    hpet.write(GEN_CONF, 4, 1)
    t.advance(10_000 + 20_000 * 3)  # matches at 1000, 3000, 5000, 7000 ticks
    assert lines[23].pulses == 4


def test_32_bit_mode_wraps_and_a_one_shot_matches_again(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(MAIN_COUNTER, 8, 0xFFFF_FFFF_FFFF_FF00)
    hpet.write(timer_reg(1, 0), 8, TN_INT_ENB | TN_32MODE | TN_ROUTE_23)
    hpet.write(timer_reg(1, 8), 8, 0x1_0000_0010)  # truncated to 32 bits: 0x10
    assert hpet.read(timer_reg(1, 8), 8) == 0x10
    hpet.write(GEN_CONF, 4, 1)
    t.advance(0x110 * 10)  # the low 32 bits wrap to 0x10
    assert lines[23].pulses == 1
    t.advance((1 << 32) * 10)
    assert lines[23].pulses == 2


def test_level_timer_holds_its_line_until_status_is_cleared(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_ENB | TN_INT_TYPE_LEVEL | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 100)
    hpet.write(GEN_CONF, 4, 1)
    t.advance(1_000)
    assert hpet.read(GINTR_STA, 8) == 1 and lines[23].level == 1
    hpet.write(GINTR_STA, 4, 2)  # another timer's bit: nothing changes
    assert lines[23].level == 1
    hpet.write(GINTR_STA, 4, 1)
    assert hpet.read(GINTR_STA, 8) == 0 and lines[23].history == [1, 0]


def test_enabling_arms_every_timer_at_one_instant_on_a_slow_host(t: FakeTime) -> None:
    """mbhpet's routed one-shot under --record: the host stalled between arming two timers, the counter ran
    past timer 2's near comparator, and the match was lost until the counter wrapped."""

    def stalling_clock() -> int:
        t.now += 3_000_000  # 3 ms pass at every reading: far more than timer 2's 2-ms comparator
        return t.now

    lines = {gsi: FakeIrqLine(gsi=gsi) for gsi in (2, 8, 23)}
    hpet = Hpet(lines, t.schedule, stalling_clock)
    hpet.write(timer_reg(2, 0), 8, TN_INT_ENB | TN_INT_TYPE_LEVEL | TN_ROUTE_23)
    hpet.write(timer_reg(2, 8), 8, 200_000)  # 2 ms at 10 ns a tick
    hpet.write(GEN_CONF, 4, 1)
    assert [p.when_ns - t.now for p in t.live()] == [2_000_000]  # 2 ms from the enable's one reading
    t.advance(2_000_000)
    assert hpet.fired[2] == 1 and lines[23].level == 1


def test_level_status_is_set_with_interrupts_disabled_but_the_line_stays_low(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_TYPE_LEVEL | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 100)
    hpet.write(GEN_CONF, 4, 1)
    t.advance(1_000)
    assert hpet.read(GINTR_STA, 8) == 1 and lines[23].history == []
    hpet.write(timer_reg(0, 0), 8, TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_ROUTE_23)
    assert lines[23].level == 1
    hpet.write(GEN_CONF, 4, 0)  # halting the HPET disables its interrupts
    assert lines[23].level == 0


def test_legacy_replacement_routes_timers_0_and_1_to_gsi_2_and_8(t: FakeTime) -> None:
    hpet, lines = make(t)
    for n in (0, 1):
        hpet.write(timer_reg(n, 0), 8, TN_INT_ENB | TN_ROUTE_23)
        hpet.write(timer_reg(n, 8), 8, 100 * (n + 1))
    hpet.write(GEN_CONF, 4, 3)
    t.advance(10_000)
    assert (lines[2].pulses, lines[8].pulses, lines[23].pulses) == (1, 1, 0)


def test_disable_cancels_pending_matches(t: FakeTime) -> None:
    hpet, lines = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_INT_ENB | TN_ROUTE_23)
    hpet.write(timer_reg(0, 8), 8, 1_000)
    hpet.write(GEN_CONF, 4, 1)
    hpet.write(GEN_CONF, 4, 0)
    t.advance(1_000_000)
    assert lines[23].pulses == 0 and t.live() == []


def test_rewriting_a_comparator_keeps_one_pending_match(t: FakeTime) -> None:
    hpet, _ = make(t)
    hpet.write(GEN_CONF, 4, 1)
    for value in range(1_000, 2_000):
        hpet.write(timer_reg(0, 8), 8, value)
    assert len(t.live()) <= 3  # at most one per comparator


@pytest.mark.parametrize(
    ("offset", "size"), [(0x0, 1), (0x0, 2), (0x2, 4), (0x4, 8), (0x3FC, 8), (0x400, 4), (0x30, 8), (0x160, 8)]
)
def test_bad_accesses_read_all_ones_and_are_counted(offset: int, size: int) -> None:
    hpet, _ = make(FakeTime())
    assert hpet.read(offset, size) == (1 << 8 * size) - 1
    hpet.write(offset, size, 0)
    assert hpet.guest_errors == 2


def test_routes_outside_int_route_cap_are_refused(t: FakeTime) -> None:
    hpet, _ = make(t)
    hpet.write(timer_reg(0, 0), 8, TN_ROUTE_23)
    hpet.write(timer_reg(0, 0), 8, 5 << 9)
    assert (hpet.read(timer_reg(0, 0), 8) >> 9) & 0x1F == 23 and hpet.guest_errors == 1
