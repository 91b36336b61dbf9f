"""The High Precision Event Timer (IA-PC HPET 1.0a) at 0xFED00000, as QEMU's pc machine offers it.

One 1 KiB register block: capabilities (revision 1, three timers, 64-bit counter, legacy replacement
capable, vendor 0x8086, 10 ns period = 100 MHz), the general configuration (ENABLE_CNF, LEG_RT_CNF), the
interrupt status (write 1 to clear; level-triggered timers only), the main counter and three timers, each
with configuration/capabilities and a comparator. Every timer can be periodic and 64-bit and routes to
the IOAPIC inputs QEMU's q35 machine offers (INT_ROUTE_CAP 0x00FF0104: inputs 2, 8 and 16-23; its pc
machine offers input 2 only); in legacy replacement mode timer 0 drives IOAPIC input 2 (ISA IRQ 0
through the override) and timer 1 input 8 (the RTC's), as in QEMU. FSB (MSI) delivery is not offered.

The counter is derived from a monotonic clock (nanoseconds; injectable for tests), not counted, so an
idle HPET costs nothing. A timer's next match is one call on the event loop's schedule: at most one
pending per comparator (the previous one is cancelled whenever it is re-armed). Where QEMU and the spec
differ: a level-triggered timer sets its status bit even with Tn_INT_ENB clear (the spec's rule); it
just does not drive the line. Legacy replacement does not stop the PIT or the RTC's interrupt (QEMU's
does): a guest using it should leave PIT channel 0 unprogrammed.

Registers are read and written as 4 or 8 naturally aligned bytes (a 4-byte access at +4 is the high
half); anything else reads all ones, is ignored and counted as a guest error. Accesses come from vCPU
threads and timer callbacks from the event-loop thread, so state changes take a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ...core.bus import Device, all_ones
from ...core.irq import IrqLine
from ...core.state import check_keys, take_int, take_list
from ...errors import SnapshotError

HPET_BASE = 0xFED0_0000
HPET_SIZE = 0x400
HPET_TIMERS = 3
HPET_PERIOD_FS = 10_000_000  # 10 ns, QEMU's
NS_PER_TICK = HPET_PERIOD_FS // 1_000_000
HPET_HZ = 1_000_000_000 // NS_PER_TICK
INT_ROUTE_CAP = 0x00FF_0104  # IOAPIC inputs 2, 8, 16-23 (QEMU's q35 machine)
LEGACY_ROUTES = (2, 8)  # the IOAPIC inputs of timers 0 and 1 in legacy replacement mode

# register offsets
GCAP_ID, GEN_CONF, GINTR_STA, MAIN_COUNTER = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
TN_CONF, TN_COMPARATOR, TN_FSB_ROUTE = 0x00, 0x08, 0x10

# General Capabilities and ID: rev 1, COUNT_SIZE_CAP (bit 13), LEG_RT_CAP (bit 15), vendor 0x8086
CAPABILITIES = (HPET_PERIOD_FS << 32) | (0x8086 << 16) | (1 << 15) | (1 << 13) | ((HPET_TIMERS - 1) << 8) | 1
ENABLE_CNF, LEG_RT_CNF = 1 << 0, 1 << 1

# Timer N Configuration and Capabilities bits
TN_INT_TYPE_LEVEL, TN_INT_ENB, TN_TYPE_PERIODIC = 1 << 1, 1 << 2, 1 << 3
TN_PER_INT_CAP, TN_SIZE_CAP, TN_VAL_SET, TN_32MODE = 1 << 4, 1 << 5, 1 << 6, 1 << 8
TN_INT_ROUTE_SHIFT, TN_INT_ROUTE_MASK = 9, 0x1F << 9
TN_WRITABLE = TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE | TN_INT_ROUTE_MASK
TN_FIXED_CAPS = (INT_ROUTE_CAP << 32) | TN_PER_INT_CAP | TN_SIZE_CAP

MASK64, MASK32 = (1 << 64) - 1, (1 << 32) - 1
MIN_REARM_TICKS = 1_000  # 10 us: a periodic timer's next match is never sooner (shorter periods skip matches)
FAR_FUTURE_TICKS = 1 << 48  # ~32 days: a match further away is not scheduled (a 64-bit counter just passed it)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Cancellable]
"""``schedule(delay_seconds, fn)`` returning a handle with ``cancel()`` (core/eventloop.EventLoop.call_later)."""


class HpetTimer:
    """One comparator: its configuration, comparator, period and the one pending match (if any)."""

    __slots__ = ("index", "config", "comparator", "period", "pending", "deadline_ns")

    def __init__(self, index: int) -> None:
        self.index = index
        self.config = 0
        self.comparator = MASK64  # QEMU's reset value
        self.period = 0
        self.pending: Cancellable | None = None
        self.deadline_ns = 0

    @property
    def width_mask(self) -> int:
        return MASK32 if self.config & TN_32MODE else MASK64

    @property
    def route(self) -> int:
        return (self.config & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT


class Hpet(Device):
    name = "hpet"

    def __init__(
        self,
        lines: Mapping[int, IrqLine],
        schedule: Schedule,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """``lines``: IOAPIC input -> line, for the inputs this HPET may drive (none: the timers count,
        nothing fires). vmm/platform.py maps input 2 to GSI 0, the line that reaches IOAPIC pin 2."""
        super().__init__()
        self._lines = dict(lines)
        self._schedule = schedule
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self.config = 0
        self.status = 0
        self._counter_base = 0  # the counter's value at _base_ns (its value while halted)
        self._base_ns = clock_ns()
        self.timers = [HpetTimer(n) for n in range(HPET_TIMERS)]
        self.fired = [0] * HPET_TIMERS  # matches per timer, for tests and stats
        self._raised: set[int] = set()  # IOAPIC inputs this HPET holds high

    # -- snapshot --------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        """The main counter is saved as a value, so it continues from there (host time since does not show)."""
        with self._lock:
            timers = [{"config": t.config, "comparator": t.comparator, "period": t.period} for t in self.timers]
            return {"config": self.config, "status": self.status, "counter": self.counter(), "timers": timers}

    def load_state(self, state: dict[str, Any]) -> None:
        who = self.name
        saved = check_keys(state, ("config", "status", "counter", "timers"), who)
        config = take_int(saved, "config", who, 2)
        status = take_int(saved, "status", who, HPET_TIMERS)
        counter = take_int(saved, "counter", who)
        entries = take_list(saved, "timers", who, HPET_TIMERS)
        if len(entries) != HPET_TIMERS:
            raise SnapshotError(f"{who}: {len(entries)} timers saved, this HPET has {HPET_TIMERS}")
        timers = []
        for n, entry in enumerate(entries):
            t = check_keys(entry, ("config", "comparator", "period"), f"{who} timer {n}")
            tconfig = take_int(t, "config", f"{who} timer {n}")
            route = (tconfig & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT
            if tconfig & ~TN_WRITABLE or route and not INT_ROUTE_CAP >> route & 1:  # 0: the reset value
                raise SnapshotError(f"{who} timer {n}: configuration {tconfig:#x} is not one a guest can set")
            timers.append((tconfig, take_int(t, "comparator", who), take_int(t, "period", who)))
        with self._lock:
            self.config, self.status = config, status
            now_ns = self._clock_ns()  # one instant for the whole restore, as for an enable
            self._counter_base, self._base_ns = counter, now_ns
            for timer, (tconfig, comparator, period) in zip(self.timers, timers, strict=True):
                timer.config, timer.comparator, timer.period = tconfig, comparator, period
                self._arm(timer, now_ns)  # a match still ahead is scheduled again, from the restored counter
            self._raised = set()  # a fresh machine's lines are low: raise what the status says
            self._update_lines()

    # -- the counter -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config & ENABLE_CNF)

    def counter(self) -> int:
        return self._counter_at(self._clock_ns()) if self.enabled else self._counter_base

    def _counter_at(self, now_ns: int) -> int:
        if not self.enabled:
            return self._counter_base
        return (self._counter_base + (now_ns - self._base_ns) // NS_PER_TICK) & MASK64

    # -- bus interface ---------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset % size or offset + size > HPET_SIZE:
            self.guest_error(f"{size}-byte read at +{offset:#x}")
            return all_ones(size)
        with self._lock:
            value = self._read_register(offset & ~7)
        if value is None:
            self.guest_error(f"read of unknown register +{offset:#x}")
            return all_ones(size)
        return (value >> (8 * (offset & 7))) & all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset % size or offset + size > HPET_SIZE:
            self.guest_error(f"{size}-byte write at +{offset:#x}")
            return
        reg, shift = offset & ~7, 8 * (offset & 7)
        mask = all_ones(size) << shift
        with self._lock:
            old = self._read_register(reg)
            if old is None:
                self.guest_error(f"write to unknown register +{offset:#x}")
                return
            self._write_register(reg, (old & ~mask) | ((value << shift) & mask), mask)

    def _read_register(self, reg: int) -> int | None:
        if reg >= TIMER_BASE:
            timer, field = self._timer_at(reg)
            if timer is None:
                return None
            if field == TN_CONF:
                return timer.config | TN_FIXED_CAPS
            return timer.comparator if field == TN_COMPARATOR else 0  # FSB route: not offered, reads 0
        if reg == MAIN_COUNTER:
            return self.counter()
        if reg == GCAP_ID:
            return CAPABILITIES
        if reg == GEN_CONF:
            return self.config
        return self.status if reg == GINTR_STA else None

    def _write_register(self, reg: int, value: int, mask: int) -> None:
        if reg == GEN_CONF:
            self._set_general_config(value & (ENABLE_CNF | LEG_RT_CNF))
        elif reg == GINTR_STA:
            self.status &= ~(value & mask)  # write 1 to clear
            self._update_lines()
        elif reg == MAIN_COUNTER:
            if self.enabled:
                self.guest_error("main counter written while the HPET is enabled")
            else:
                self._counter_base = value
        elif reg >= TIMER_BASE:
            timer, field = self._timer_at(reg)
            assert timer is not None  # _read_register knew it
            if field == TN_CONF:
                self._set_timer_config(timer, value)
            elif field == TN_COMPARATOR:
                self._set_comparator(timer, value, mask)
        else:
            self.guest_error(f"write to read-only register +{reg:#x}")

    @staticmethod
    def _timer_field(reg: int) -> tuple[int, int]:
        return (reg - TIMER_BASE) // TIMER_STRIDE, (reg - TIMER_BASE) % TIMER_STRIDE

    def _timer_at(self, reg: int) -> tuple[HpetTimer | None, int]:
        index, field = self._timer_field(reg)
        if index >= HPET_TIMERS or field > TN_FSB_ROUTE:
            return None, field
        return self.timers[index], field

    # -- configuration ---------------------------------------------------------------------------
    def _set_general_config(self, value: int) -> None:
        # One reading for the whole write: the guest sees it as one instant. Arming each timer against a fresh
        # reading let a slow host (a GIL wait between two timers) run the counter past a near comparator
        # before that timer was armed, and its one-shot was lost until the counter wrapped.
        now_ns = self._clock_ns()
        was_enabled = self.enabled
        if was_enabled and not value & ENABLE_CNF:
            self._counter_base = self._counter_at(now_ns)  # halt: freeze the count
        elif value & ENABLE_CNF and not was_enabled:
            self._base_ns = now_ns  # run: count on from the (maybe written) value
        self.config = value
        for timer in self.timers:
            self._arm(timer, now_ns)
        self._update_lines()

    def _set_timer_config(self, timer: HpetTimer, value: int) -> None:
        route = (value & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT
        if not INT_ROUTE_CAP >> route & 1:
            self.guest_error(f"timer {timer.index} routed to IOAPIC input {route}, outside INT_ROUTE_CAP")
            value = (value & ~TN_INT_ROUTE_MASK) | (timer.config & TN_INT_ROUTE_MASK)
        timer.config = value & TN_WRITABLE
        if timer.config & TN_32MODE:
            timer.comparator &= MASK32
            timer.period &= MASK32
        if not timer.config & TN_INT_TYPE_LEVEL:
            self.status &= ~(1 << timer.index)  # edge timers have no status to clear
        self._arm(timer)
        self._update_lines()

    def _set_comparator(self, timer: HpetTimer, value: int, mask: int) -> None:
        """QEMU's rule: a one-shot comparator takes the value; a periodic one takes it as the period, and
        as the next match only with Tn_VAL_SET (which the write clears)."""
        periodic = bool(timer.config & TN_TYPE_PERIODIC)
        width = timer.width_mask
        if not periodic or timer.config & TN_VAL_SET:
            timer.comparator = value & width
        if periodic:
            timer.period = ((timer.period & ~mask) | (value & mask)) & width
        timer.config &= ~TN_VAL_SET
        self._arm(timer)

    # -- matches ---------------------------------------------------------------------------------
    def _arm(self, timer: HpetTimer, now_ns: int | None = None) -> None:
        """Cancel the timer's pending match and schedule the next one, if the HPET runs (``now_ns``: the
        reading the caller took for this instant, or a fresh one)."""
        if timer.pending is not None:
            timer.pending.cancel()
            timer.pending = None
        if not self.enabled:
            return
        now_ns = self._clock_ns() if now_ns is None else now_ns
        ticks = (timer.comparator - self._counter_at(now_ns)) & timer.width_mask
        self._schedule_in(timer, ticks, now_ns)

    def _schedule_in(self, timer: HpetTimer, ticks: int, now_ns: int | None = None) -> None:
        if ticks >= FAR_FUTURE_TICKS:
            return
        timer.deadline_ns = (self._clock_ns() if now_ns is None else now_ns) + ticks * NS_PER_TICK
        timer.pending = self._schedule(ticks * NS_PER_TICK / 1e9, lambda: self._expire(timer))

    def _expire(self, timer: HpetTimer) -> None:
        """The event loop's call at a match (runs on the loop thread)."""
        with self._lock:
            if timer.pending is None or not self.enabled:
                return  # cancelled after the loop had already taken it
            timer.pending = None
            early_ns = timer.deadline_ns - self._clock_ns()
            if early_ns > 0:  # the loop's clock and ours round differently
                self._schedule_in(timer, -(-early_ns // NS_PER_TICK))
                return
            self._fire(timer)
            self._rearm_after_match(timer)

    def _fire(self, timer: HpetTimer) -> None:
        self.fired[timer.index] += 1
        if timer.config & TN_INT_TYPE_LEVEL:
            self.status |= 1 << timer.index
            self._update_lines()
        elif timer.config & TN_INT_ENB:
            line = self._lines.get(self._route(timer))
            if line is not None:
                line.pulse()

    def _rearm_after_match(self, timer: HpetTimer) -> None:
        width = timer.width_mask
        if timer.config & TN_TYPE_PERIODIC and timer.period:
            # The next match at least MIN_REARM_TICKS from now; missed periods are skipped, not delivered
            # in a burst (as QEMU), so a 10 ns period cannot keep the event loop busy without end.
            passed = (self.counter() - timer.comparator) & width
            steps = (passed + MIN_REARM_TICKS) // timer.period + 1
            timer.comparator = (timer.comparator + timer.period * steps) & width
            self._arm(timer)
        else:  # a one-shot comparator matches again only when the counter wraps round to it
            self._schedule_in(timer, width + 1 - ((self.counter() - timer.comparator) & width))

    # -- interrupt lines -------------------------------------------------------------------------
    def _route(self, timer: HpetTimer) -> int:
        if self.config & LEG_RT_CNF and timer.index < len(LEGACY_ROUTES):
            return LEGACY_ROUTES[timer.index]
        return timer.route

    def _update_lines(self) -> None:
        """Raise the lines level-triggered timers assert (several may share one) and lower the ones they
        no longer do. Lines the HPET never raised are left alone: a PCI device may share them."""
        high: set[int] = set()
        if self.enabled:
            for timer in self.timers:
                asserting = timer.config & TN_INT_TYPE_LEVEL and timer.config & TN_INT_ENB
                if asserting and self.status >> timer.index & 1 and self._route(timer) in self._lines:
                    high.add(self._route(timer))
        for pin in high - self._raised:
            self._lines[pin].set_level(True)
        for pin in self._raised - high:
            self._lines[pin].set_level(False)
        self._raised = high
