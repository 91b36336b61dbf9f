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

log = logging.getLogger("broiler.core.eventloop")

Schedule = Callable[[float, Callable[[], None]], object]
"""``schedule(delay_seconds, fn)``: call ``fn()`` once after the delay; returns an opaque handle."""


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, name: str = "broiler-events") -> None:
        self._selector = selectors.DefaultSelector()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wakeup, selectors.EVENT_READ, None)
        self._pending: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self.callback_errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    # -- API (any thread) -------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._pending.append(fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(delay, 0.0), fn)
        self.call_soon(lambda: heapq.heappush(self._timers, (timer.when, next(self._seq), timer)))
        return timer

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        def register() -> None:
            self._selector.register(fd, selectors.EVENT_READ, callback)

        self.call_soon(register)

    def remove_reader(self, fd: int, then: Callable[[], None] | None = None) -> None:
        """Stop watching ``fd``; ``then`` runs on the loop thread afterwards (e.g. to close it)."""

        def remove() -> None:
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

    def _run(self) -> None:
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
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
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._call(timer.fn)

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.callback_errors += 1
            log.exception("event-loop callback failed")
