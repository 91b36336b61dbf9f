"""The one doorbell -> work -> completion-interrupt engine, shared by every async device.

A device hands the engine a ``Schedule``, the work's ``delay`` and two callbacks; the guest's doorbell
(an ioeventfd callback with its kick count, or a trapped write) calls ``kick(n)``:

- **idle**: a *run* starts at once. ``on_start(run)`` does the ring-time part of the work (a DMA copy,
  say) and returns its result code (0 = fine), then one timer is scheduled; when it fires the run
  completes and ``on_complete(run, result)`` publishes the result and raises the completion interrupt.
- **busy** (a run is in flight): **kicks coalesce.** The kick only sets *pending* and is counted in
  ``busy_kicks``; nothing is scheduled and nothing is logged for it. When the current run completes
  the engine starts exactly one more run, which covers every kick that arrived meanwhile.

So an eventfd count is a count, not a queue: however fast a guest rings (``1: out %ax,%dx; jmp 1b``),
the engine holds at most one timer and one pending flag, and the completion log is a deque of the
last ``LOG_SIZE`` runs plus counters. Host memory stays flat.

A ``Run`` covers kicks ``first``..``last`` (numbered from 1 in arrival order, both paths together),
so ``kicks_completed`` tells how many requests are done even though several shared one run.

Snapshot: ``save_state`` holds the run in flight and its time left, asked of the completion's timer (an event
loop's timer stands still while the VM is paused, so a pause before the save does not use the work up);
``load_state`` schedules the completion again with that time.

Thread-safety: ``kick`` may come from the event-loop thread and vCPU threads at once; the callbacks
run without the engine's lock held, on whichever thread kicked (``on_start``) or the timer's thread
(``on_complete``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from ..core.eventloop import Schedule, TimeLeft
from ..core.state import check_keys, take_bool, take_int, take_list
from ..errors import SnapshotError

LOG_SIZE = 64  # completed runs kept for inspection; older ones survive only in the counters


class Run(NamedTuple):
    """One pass of the work: the ``number``-th run, covering kicks ``first``..``last``."""

    number: int
    first: int
    last: int

    @property
    def kicks(self) -> int:
        return self.last - self.first + 1


class DoorbellEngine:
    """Doorbell kicks in, at most one run in flight, coalescing kicks that arrive while busy."""

    def __init__(
        self,
        schedule: Schedule,
        delay: float,
        *,
        on_complete: Callable[[Run, int], None],
        on_start: Callable[[Run], int] | None = None,
    ) -> None:
        self._schedule = schedule
        self.delay = delay
        self._on_start = on_start
        self._on_complete = on_complete
        self._lock = threading.Lock()
        self._current: Run | None = None
        self._result = 0  # what on_start returned for the current run
        self._pending = False
        self._timer: object = None  # the Schedule's handle of the current run's completion
        self._due = 0.0  # time.monotonic() at which it completes: for a handle that cannot say (a test's)
        self.kicks = 0  # every kick, both paths
        self.busy_kicks = 0  # kicks that arrived while a run was in flight (coalesced)
        self.runs = 0  # runs started
        self.runs_completed = 0
        self.kicks_completed = 0  # kicks covered by completed runs
        self.log: deque[Run] = deque(maxlen=LOG_SIZE)

    @property
    def busy(self) -> bool:
        """A run is in flight (or about to start because kicks are pending)."""
        return self._current is not None

    def kick(self, kicks: int = 1) -> None:
        """The doorbell rang ``kicks`` times (an eventfd count, or 1 for a trapped write)."""
        if kicks <= 0:
            return
        with self._lock:
            self.kicks += kicks
            if self._current is not None:
                self.busy_kicks += kicks
                self._pending = True
                return
            run = self._next_run_locked()
        self._start(run)

    def _next_run_locked(self) -> Run:
        # A run covers every kick after the last one a finished run covered, up to now.
        self.runs += 1
        self._current = Run(self.runs, self.kicks_completed + 1, self.kicks)
        return self._current

    def _start(self, run: Run) -> None:
        result = self._on_start(run) if self._on_start is not None else 0
        with self._lock:
            self._result = result
        self._arm(run, self.delay)

    def _arm(self, run: Run, delay: float) -> None:
        due = time.monotonic() + delay
        timer = self._schedule(delay, self._finish)
        with self._lock:
            if self._current is run:  # not already finished (a zero delay) and followed by another run
                self._timer, self._due = timer, due

    def _time_left_locked(self) -> float:
        """Of the run in flight, in seconds. The event loop's timers stop while the VM is paused, so what they
        say is guest-running time; the host clock is only the fallback for handles that cannot say."""
        timer = self._timer
        left = timer.remaining() if isinstance(timer, TimeLeft) else self._due - time.monotonic()
        return min(max(0.0, left), self.delay)

    # -- snapshot: the run in flight completes after a restore -----------------------------
    COUNTERS = ("kicks", "busy_kicks", "runs", "runs_completed", "kicks_completed")

    def save_state(self) -> dict[str, Any]:
        with self._lock:
            run = self._current
            state: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
            state["current"] = None if run is None else [run.number, run.first, run.last]
            state["result"], state["pending"] = self._result, self._pending
            # Time left of the run in flight, in microseconds of running time (a pause does not use it up).
            state["remaining_us"] = 0 if run is None else int(self._time_left_locked() * 1e6)
            return state

    def load_state(self, state: dict[str, Any], who: str) -> None:
        """Put the counters back and, if a run was in flight, schedule its completion again."""
        saved = check_keys(state, (*self.COUNTERS, "current", "result", "pending", "remaining_us"), who)
        counters = {name: take_int(saved, name, who) for name in self.COUNTERS}
        result = take_int(saved, "result", who, 32)
        pending = take_bool(saved, "pending", who)
        remaining = min(take_int(saved, "remaining_us", who) / 1e6, self.delay)
        run = None
        if saved["current"] is not None:
            items = take_list(saved, "current", who, 3)
            if len(items) != 3:
                raise SnapshotError(f"{who}: the run in flight is not [number, first, last]")
            run = Run(*(take_int({"run": v}, "run", who) for v in items))
        if counters["kicks_completed"] > counters["kicks"] or counters["runs_completed"] > counters["runs"]:
            raise SnapshotError(f"{who}: more kicks or runs completed than started")
        with self._lock:
            for name, value in counters.items():
                setattr(self, name, value)
            self._current, self._result, self._pending = run, result, pending and run is not None
        if run is not None:
            self._arm(run, remaining)

    def _finish(self) -> None:
        with self._lock:
            run, result = self._current, self._result
            if run is None:
                return
            self.runs_completed += 1
            self.kicks_completed = run.last
            self.log.append(run)
            following: Run | None = None
            if self._pending:
                self._pending = False
                following = self._next_run_locked()
            else:
                self._current = None
        self._on_complete(run, result)
        if following is not None:
            self._start(following)
