"""The event loop's side of `broiler pause` (core/eventloop.py), without KVM: timers shifted by the pause,
doorbell readers held with their kicks counted in the eventfd, other readers served, stop while paused."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from broiler.core.eventloop import EventLoop


def _settle(loop: EventLoop) -> None:
    """Every request queued so far has been applied by the loop thread."""
    loop.run_sync(lambda: None)


def _reader(fd: int, counts: list[int], seen: threading.Event) -> Callable[[], None]:
    """A reader callback: drain the eventfd, note its count, say so."""

    def on_ready() -> None:
        counts.append(os.eventfd_read(fd))
        seen.set()

    return on_ready


def test_a_pending_timer_fires_after_resume_shifted_by_the_pause(loop: EventLoop) -> None:
    fired = threading.Event()
    timer = loop.call_later(0.05, fired.set)
    _settle(loop)
    loop.pause()
    due = timer.when
    time.sleep(0.2)  # past the timer's due time: it must still wait
    assert not fired.is_set()
    loop.resume()
    assert timer.when >= due + 0.2  # shifted by at least the time held
    assert loop.paused_seconds >= 0.2 and not loop.paused
    assert fired.wait(5)


def test_a_timer_scheduled_during_a_pause_counts_from_the_pause(loop: EventLoop) -> None:
    loop.pause()
    paused_by = time.monotonic()
    fired = threading.Event()
    timer = loop.call_later(0.01, fired.set)
    _settle(loop)
    assert timer.when <= paused_by + 0.01  # not from the moment it was asked for
    time.sleep(0.05)
    assert not fired.is_set()
    resumed_from = time.monotonic()
    loop.resume()
    assert timer.when >= resumed_from + 0.01 - 1e-6  # its whole delay is still ahead after the resume
    assert fired.wait(5)


def test_pausable_readers_are_held_and_their_kicks_counted(loop: EventLoop) -> None:
    bell = os.eventfd(0, os.EFD_NONBLOCK)
    stdin_like = os.eventfd(0, os.EFD_NONBLOCK)
    kicks: list[int] = []
    got_kicks = threading.Event()
    console = threading.Event()
    loop.add_reader(bell, _reader(bell, kicks, got_kicks), pausable=True)
    loop.add_reader(stdin_like, _reader(stdin_like, [], console))
    loop.pause()
    for _ in range(3):
        os.eventfd_write(bell, 1)
    os.eventfd_write(stdin_like, 1)
    assert console.wait(5)  # a reader that is not pausable (the console: Ctrl-A x) is still served
    _settle(loop)
    assert kicks == []
    loop.resume()
    assert got_kicks.wait(5)
    assert kicks == [3]  # the count the eventfd held, in one wakeup
    loop.remove_reader(bell, then=lambda: os.close(bell))
    loop.remove_reader(stdin_like, then=lambda: os.close(stdin_like))
    _settle(loop)


def test_a_reader_added_during_a_pause_waits_for_the_resume(loop: EventLoop) -> None:
    bell = os.eventfd(0, os.EFD_NONBLOCK)
    got = threading.Event()
    loop.pause()
    loop.add_reader(bell, _reader(bell, [], got), pausable=True)
    os.eventfd_write(bell, 1)
    _settle(loop)
    assert not got.is_set()
    loop.resume()
    assert got.wait(5)
    loop.remove_reader(bell, then=lambda: os.close(bell))
    _settle(loop)


def test_pause_twice_resume_twice_and_stop_while_paused(loop: EventLoop) -> None:
    loop.pause()
    loop.pause()  # a no-op, not an error
    assert loop.paused
    loop.resume()
    loop.resume()
    assert not loop.paused
    loop.pause()
    loop.stop()  # the wakeup eventfd is still watched: a paused loop ends
    assert not loop.thread.is_alive()


class FakeClock:
    """Seconds that move only when the test says so: nothing here depends on how fast the host runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_timers_time_left_stands_still_while_the_loop_is_paused() -> None:
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    loop.start()
    try:
        timer = loop.call_later(10.0, lambda: None)
        _settle(loop)
        clock.now += 3
        assert timer.remaining() == 7.0
        loop.pause()
        clock.now += 100  # a long pause: none of it is the timer's running time
        assert timer.remaining() == 7.0
        loop.resume()
        assert timer.remaining() == 7.0 and loop.paused_seconds == 100
        clock.now += 2
        assert timer.remaining() == 5.0
    finally:
        loop.close()


def test_readers_added_and_removed_before_the_start_keep_their_order() -> None:
    """A doorbell moved before the loop runs (a BAR put back by a restore): the old eventfd is removed and
    closed at once, the new one often gets the same fd number, and it must reach the new callback only."""
    loop = EventLoop()
    old = os.eventfd(0, os.EFD_NONBLOCK)
    calls: list[str] = []
    loop.add_reader(old, lambda: calls.append("old"), pausable=True)
    loop.remove_reader(old, then=lambda: os.close(old))
    new = os.eventfd(0, os.EFD_NONBLOCK)  # the lowest free number: usually old's
    seen = threading.Event()

    def on_new() -> None:
        calls.append(f"new {os.eventfd_read(new)}")
        seen.set()

    loop.add_reader(new, on_new, pausable=True)
    try:
        loop.start()
        os.eventfd_write(new, 1)
        assert seen.wait(5)
        _settle(loop)
        assert calls == ["new 1"]
    finally:
        loop.close()
        os.close(new)
