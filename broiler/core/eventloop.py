"""One event-loop thread per VM: eventfd readers (doorbells) and timers (device "work").

Broiler runs one thread per async device that blocks on its eventfd and ``sleep()``s to fake the
device's work. broiler has one thread for all of them: an epoll selector (``selectors``) for the
doorbell eventfds, and a heap of timers for delayed completions. Callbacks run on this thread, one
at a time, so device code needs no locking against other async callbacks (only against vCPU threads).

Everything may be called from any thread: requests are queued and a wakeup eventfd gets the loop to
apply them. A callback that raises is logged with its traceback and counted; the loop goes on.

**The one way to schedule device work** is a ``Schedule``: ``schedule(delay_seconds, fn)`` runs
``fn()`` once, later, on the loop thread, and returns a handle with ``cancel()`` that the caller may
ignore. ``EventLoop.call_later`` is one; the machine hands it to devices, and unit tests hand
``tests/unit/fakes.py::FakeScheduler``. Devices never sleep and never start threads.

**Pause** (``broiler pause``): ``pause()`` holds the device side of the VM. Timers stop firing, and on
``resume()`` every pending timer is shifted later by the length of the pause: a device's "work" takes
as much *running* time as it was given, so a completion due 10 ms after a kick still arrives 10 ms of
guest time after it, never in a burst at resume. A timer scheduled during the pause counts from the
moment of the pause. Readers added with ``pausable=True`` (doorbell eventfds) are taken out of the
selector: kicks accumulate in the eventfd's counter (a count, so nothing is lost and nothing grows) and
are handled once on resume. Other readers (the console's stdin, so Ctrl-A x still quits) and queued
``call_soon`` requests go on. A timer's ``remaining()`` is therefore running time: it stands still while
the loop is held (what a snapshot saves as a device's work left, devices/doorbell_engine.py).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("broiler.core.eventloop")

TIMER_PURGE_MIN = 1024  # heap size from which cancelled timers are swept out

Schedule = Callable[[float, Callable[[], None]], object]
"""``schedule(delay_seconds, fn)``: call ``fn()`` once after the delay; returns an opaque handle."""


@runtime_checkable
class TimeLeft(Protocol):
    """A ``Schedule`` handle that can say how long until it fires (``EventLoop.call_later``'s can)."""

    def remaining(self) -> float: ...


class Timer:
    __slots__ = ("when", "fn", "cancelled", "_loop")

    def __init__(self, when: float, fn: Callable[[], None], loop: EventLoop) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        self.cancelled = True

    def remaining(self) -> float:
        """Seconds of running time until it fires: frozen while the loop is held (the resume shifts ``when``
        by the pause), so time the VM spent paused is not counted as passed."""
        return max(0.0, self.when - self._loop.held_now())


class EventLoop:
    def __init__(self, name: str = "broiler-events", clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # seconds, monotonic; a test hands in a fake one
        self._selector = selectors.DefaultSelector()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wakeup, selectors.EVENT_READ, None)
        self._pending: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._purge_at = TIMER_PURGE_MIN
        self._stopping = False
        self.callback_errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._paused_at: float | None = None  # the clock at the pause; written only on the loop thread
        self._pausable: dict[int, Callable[[], None]] = {}  # fd -> callback of every pausable reader
        self.paused_seconds = 0.0  # total time held, over every pause
        self.observer: Any = None  # core/observe.Observer: sees deferred work scheduled and run

    # -- API (any thread) -------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._pending.append(fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        if self.observer is not None:
            fn = self.observer.timer(fn)
        delay = max(delay, 0.0)
        timer = Timer(self._clock() + delay, fn, self)

        def push() -> None:
            if self._paused_at is not None:  # scheduled during a pause: counts from the pause
                timer.when = min(timer.when, self._paused_at + delay)
            self._push_timer(timer)

        self.call_soon(push)
        return timer

    def add_reader(self, fd: int, callback: Callable[[], None], *, pausable: bool = False) -> None:
        """Call ``callback`` on the loop thread whenever ``fd`` is readable; a ``pausable`` reader is
        not watched while the loop is paused (see the module docstring)."""

        def register() -> None:
            if pausable:
                self._pausable[fd] = callback
            if not (pausable and self._paused_at is not None):
                self._selector.register(fd, selectors.EVENT_READ, callback)

        if self._started:
            self.call_soon(register)
        else:
            # Not running yet: applied now, like remove_reader's, so the two keep their order. Queued, it ran
            # after a removal that had already closed the fd, and a new eventfd that reused the number got
            # the old reader's callback (a BAR moved during a restore, before the loop starts).
            register()

    def remove_reader(self, fd: int, then: Callable[[], None] | None = None) -> None:
        """Stop watching ``fd``; ``then`` runs on the loop thread afterwards (e.g. to close it)."""

        def remove() -> None:
            self._pausable.pop(fd, None)
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
            if then is not None:
                then()

        if self._started and self._thread.is_alive():
            self.call_soon(remove)
        else:
            remove()

    def run_sync(self, fn: Callable[[], None], timeout: float = 5.0) -> None:
        """Run ``fn`` on the loop thread and wait for it (or run it here if the loop is not running)."""
        if not (self._started and self._thread.is_alive()) or threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()

        def wrapped() -> None:
            try:
                fn()
            finally:
                done.set()

        self.call_soon(wrapped)
        done.wait(timeout)

    def pause(self) -> None:
        """Hold timers and pausable readers until ``resume`` (waits for the loop thread to apply it)."""
        self.run_sync(self._pause)

    def resume(self) -> None:
        """Shift pending timers by the pause and watch the pausable readers again."""
        self.run_sync(self._resume)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def held_now(self) -> float:
        """The loop's clock, stopped at the moment of the pause while it is held: what timers count against."""
        paused_at = self._paused_at  # one read: the loop thread may clear it meanwhile
        return self._clock() if paused_at is None else paused_at

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._started and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self._selector.close()
        os.close(self._wakeup)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- the loop ------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wakeup, 1)
        except OSError:
            pass  # closed: the loop is gone

    def _pause(self) -> None:
        if self._paused_at is not None:
            return
        self._paused_at = self._clock()
        for fd in self._pausable:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _resume(self) -> None:
        if self._paused_at is None:
            return
        held = self._clock() - self._paused_at
        self.paused_seconds += held
        # The same shift for every entry keeps the heap ordered: no re-heapify needed. Shifted before the
        # pause ends, so a timer's remaining() never counts the pause as passed.
        self._timers = [(when + held, seq, timer) for when, seq, timer in self._timers]
        for _, _, timer in self._timers:
            timer.when += held
        self._paused_at = None
        for fd, callback in self._pausable.items():
            self._selector.register(fd, selectors.EVENT_READ, callback)  # a kick held meanwhile is seen at once

    def _push_timer(self, timer: Timer) -> None:
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        if len(self._timers) > self._purge_at:
            # Cancelled timers stay in the heap until due; a guest re-arming a device timer (an HPET
            # comparator) could pile them up. Dropping them whenever the heap doubles keeps it within
            # twice the live timers, at amortised O(1) per push.
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._purge_at = max(TIMER_PURGE_MIN, 2 * len(self._timers))

    def _run(self) -> None:
        while not self._stopping:
            timeout = None
            if self._timers and self._paused_at is None:
                timeout = max(0.0, self._timers[0][0] - self._clock())
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    try:
                        os.eventfd_read(self._wakeup)
                    except BlockingIOError:
                        pass
                else:
                    self._call(key.data)
            while self._pending:
                self._call(self._pending.popleft())
            now = self._clock()
            while self._timers and self._timers[0][0] <= now and self._paused_at is None:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._call(timer.fn)

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.callback_errors += 1
            log.exception("event-loop callback failed")
