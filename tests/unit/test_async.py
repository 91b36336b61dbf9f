from __future__ import annotations

import threading
import time

import pytest

from broiler.core.bus import all_ones
from broiler.core.eventloop import TIMER_PURGE_MIN, EventLoop
from broiler.core.ioeventfd import Doorbells
from broiler.core.irq import FIXED_LINES, IrqAllocator, default_routing
from broiler.devices.demo.async_demo import ASYNC_PIO, VIOAPIC, AsyncDemo
from broiler.devices.demo.coalesced_log import CoalescedLog, checksum
from broiler.errors import ConfigError
from tests.unit.fakes import FakeIrqLine, FakeScheduler


def immediate(delay: float, fn) -> None:  # noqa: ANN001
    fn()


def test_async_device_completes_each_kick_and_acknowledge_lowers_the_line() -> None:
    line = FakeIrqLine(6)
    dev = AsyncDemo(ASYNC_PIO, line, immediate)
    assert dev.read(0x4, 4) == 6
    dev.ring(3)  # one eventfd read carrying 3 kicks: one run completes all three requests
    assert dev.completions == 3 and dev.read(0xC, 4) == 3
    assert dev.read(0x8, 4) == 1 and line.level == 1 and line.raises == 1
    dev.write(0x8, 4, 1)
    assert dev.read(0x8, 4) == 0 and line.level == 0
    assert [(r.first, r.last) for r in dev.completion_log] == [(1, 3)]


def test_trapped_doorbell_write_rings_the_same_handler() -> None:
    dev = AsyncDemo(ASYNC_PIO, FakeIrqLine(), immediate)
    dev.write(0x0, 1, 1)  # a byte write: KVM only catches 2-byte ones, so this one exits
    assert dev.trapped_kicks == 1 and dev.completions == 1


def test_edge_device_pulses() -> None:
    line = FakeIrqLine(16)
    dev = AsyncDemo(VIOAPIC, line, immediate)
    dev.ring(2)
    dev.ring(1)
    assert line.pulses == 2 and line.raises == 0 and dev.completions == 3


def test_busy_while_in_flight() -> None:
    sched = FakeScheduler()
    dev = AsyncDemo(ASYNC_PIO, FakeIrqLine(), sched)
    dev.ring()
    assert dev.read(0x8, 4) == 2  # BUSY
    sched.run()
    assert dev.read(0x8, 4) == 1  # DONE


def test_kicks_while_busy_coalesce_into_one_more_run() -> None:
    sched, line = FakeScheduler(), FakeIrqLine()
    dev = AsyncDemo(ASYNC_PIO, line, sched)
    dev.ring()
    for _ in range(10_000):  # a guest flooding the doorbell while the first request works
        dev.ring()
    assert len(sched.pending) == 1 and dev.engine.busy_kicks == 10_000  # one timer, not 10001
    assert dev.read(0x8, 4) == 2 and dev.completions == 0
    sched.pending.pop(0)[1]()  # the first run completes and starts exactly one more
    assert dev.completions == 1 and len(sched.pending) == 1 and line.raises == 1
    assert dev.read(0x8, 4) == 3  # DONE and still BUSY
    sched.run()
    assert dev.completions == 10_001 and dev.read(0xC, 4) == 10_001 and dev.read(0x8, 4) == 1
    assert [(r.first, r.last) for r in dev.completion_log] == [(1, 1), (2, 10_001)]
    assert len(sched.delays) == 2 and dev.engine.runs == dev.engine.runs_completed == 2


def test_completion_log_is_bounded_but_the_counters_are_not() -> None:
    from broiler.devices.doorbell_engine import LOG_SIZE

    dev = AsyncDemo(ASYNC_PIO, FakeIrqLine(), immediate)
    for _ in range(LOG_SIZE * 3):
        dev.ring()
    assert len(dev.completion_log) == LOG_SIZE and dev.completions == LOG_SIZE * 3
    assert dev.completion_log[-1].last == LOG_SIZE * 3 and dev.engine.runs_completed == LOG_SIZE * 3


@pytest.mark.parametrize("offset, size", [(0x4, 2), (0x6, 4), (0x10, 4), (0xC, 1)])
def test_async_device_hostile_reads(offset: int, size: int) -> None:
    dev = AsyncDemo(ASYNC_PIO, FakeIrqLine(), immediate)
    assert dev.read(offset, size) == all_ones(size)
    assert dev.guest_errors == 1


def test_coalesced_log_checksum_is_order_sensitive() -> None:
    log = CoalescedLog()
    for v in (1, 2, 3):
        log.write(0, 4, v)
    assert log.read(0x8, 4) == 3 and log.read(0xC, 4) == checksum([1, 2, 3]) != checksum([2, 1, 3])
    log.write(0x10, 4, 0)
    assert log.read(0x8, 4) == 0


def test_event_loop_timers_and_readers() -> None:
    import os

    loop = EventLoop()
    loop.start()
    fired = threading.Event()
    order: list[int] = []

    def second() -> None:
        order.append(2)
        fired.set()

    loop.call_later(0.02, second)
    loop.call_later(0.0, lambda: order.append(1))
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    got = threading.Event()

    def on_ready() -> None:
        os.eventfd_read(fd)
        got.set()

    loop.add_reader(fd, on_ready)
    os.eventfd_write(fd, 1)
    assert fired.wait(2) and got.wait(2)
    assert order == [1, 2]

    def failing() -> None:
        raise ZeroDivisionError

    loop.call_soon(failing)  # a failing callback is counted, the loop lives on
    done = threading.Event()
    loop.call_soon(done.set)
    assert done.wait(2) and loop.callback_errors == 1
    loop.close()
    os.close(fd)


def test_cancelled_timers_do_not_pile_up_in_the_event_loop() -> None:
    loop = EventLoop()
    loop.start()
    for _ in range(20_000):  # a guest re-arming a far-off device timer over and over
        loop.call_later(3600.0, lambda: None).cancel()
    live = loop.call_later(3600.0, lambda: None)
    done = threading.Event()
    loop.call_soon(done.set)
    assert done.wait(5)
    assert len(loop._timers) <= TIMER_PURGE_MIN + 1 and any(entry[2] is live for entry in loop._timers)
    loop.close()


def test_doorbell_rules_without_kvm() -> None:
    loop = EventLoop()
    bells = Doorbells(None, loop)
    bells.add(pio=True, addr=0x6100, length=2, datamatch=1, callback=lambda n: None, owner="a")
    bells.add(pio=True, addr=0x6100, length=2, datamatch=2, callback=lambda n: None, owner="b")
    with pytest.raises(ConfigError, match="collides"):
        bells.add(pio=True, addr=0x6100, length=2, datamatch=2, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="collides"):
        bells.add(pio=True, addr=0x6100, length=2, datamatch=None, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="collides"):
        bells.add(pio=True, addr=0x6101, length=1, datamatch=None, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="length 3"):
        bells.add(pio=True, addr=0x6200, length=3, datamatch=None, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="aligned"):
        bells.add(pio=False, addr=0xD000_0002, length=4, datamatch=None, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="does not fit"):
        bells.add(pio=True, addr=0x6200, length=1, datamatch=0x100, callback=lambda n: None, owner="c")
    with pytest.raises(ConfigError, match="outside"):
        bells.add(pio=True, addr=0x10000, length=2, datamatch=None, callback=lambda n: None, owner="c")
    # the same address on the other bus is a different doorbell
    bells.add(pio=False, addr=0x6100, length=2, datamatch=None, callback=lambda n: None, owner="d")
    assert bells.remove_owner("a") == 1
    bells.close()
    assert bells.active == [] and len(bells.history) == 3
    loop.close()


def test_doorbell_kicks_reach_the_callback_with_their_count() -> None:
    import os

    loop = EventLoop()
    loop.start()
    bells = Doorbells(None, loop)
    got: list[int] = []
    seen = threading.Event()

    def kicked(kicks: int) -> None:
        got.append(kicks)
        seen.set()

    bell = bells.add(pio=True, addr=0x6100, length=2, datamatch=None, callback=kicked, owner="a")
    time.sleep(0.05)
    for _ in range(3):
        os.eventfd_write(bell.fd, 1)  # what KVM does on each caught guest write
    assert seen.wait(2)
    time.sleep(0.05)
    assert sum(got) == 3 and bell.kicks == 3
    bells.close()
    loop.close()


def test_irq_allocator_never_hands_out_fixed_lines() -> None:
    alloc = IrqAllocator()
    isa = [alloc.alloc(f"d{i}", "isa") for i in range(6)]
    assert isa == [5, 6, 7, 9, 10, 11] and not set(isa) & set(FIXED_LINES)
    with pytest.raises(ConfigError, match="no free"):
        alloc.alloc("more", "isa")
    assert alloc.alloc("pci", "ioapic") == 16
    with pytest.raises(ConfigError, match="already used"):
        alloc.reserve(4, "uart2")
    with pytest.raises(ConfigError, match="out of range"):
        alloc.reserve(24, "x")
    with pytest.raises(ConfigError):
        alloc.alloc("x", "msi")


def test_default_routing_table() -> None:
    entries = [(e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) for e in default_routing()]
    pic = [(g, c, p) for g, c, p in entries if c in (0, 1)]
    ioapic = {g: p for g, c, p in entries if c == 2}
    assert (2, 0, 2) not in pic and len(pic) == 15
    assert ioapic[0] == 2 and ioapic[1] == 1 and ioapic[23] == 23 and 2 not in ioapic


def test_a_doorbell_flood_on_the_real_event_loop_holds_one_timer_at_a_time() -> None:
    loop = EventLoop()
    loop.start()
    scheduled: list[float] = []
    done = threading.Event()

    def schedule(delay: float, fn):  # noqa: ANN001, ANN202
        scheduled.append(delay)
        return loop.call_later(delay, fn)

    line = FakeIrqLine()
    dev = AsyncDemo(ASYNC_PIO, line, schedule, delay=0.01)
    for _ in range(50_000):  # `1: out %ax,%dx; jmp 1b`, as fast as Python can ring
        dev.ring()
    # Whatever the timing, a run is scheduled only when the previous one completed.
    assert len(scheduled) <= dev.engine.runs_completed + 1 <= 50_000
    loop.call_soon(lambda: None)
    for _ in range(500):
        if dev.completions == 50_000:
            done.set()
            break
        done.wait(0.01)
    loop.close()
    assert dev.completions == 50_000 and dev.engine.runs == dev.engine.runs_completed
    assert len(scheduled) == dev.engine.runs and len(dev.completion_log) <= 64


def test_doorbell_history_is_one_entry_per_doorbell_and_bounded() -> None:
    """Toggling a BAR's decode re-adds the same doorbell: one entry, counts carried on. Moving it to
    thousands of addresses keeps the history at HISTORY_LIMIT and the per-owner total intact."""
    from broiler.core.ioeventfd import HISTORY_LIMIT

    loop = EventLoop()
    bells = Doorbells(None, loop)
    for _ in range(50):
        bell = bells.add(pio=True, addr=0x6410, length=4, datamatch=None, callback=lambda n: None, owner="fn")
        bell.kicks += 2  # as _ready would count two guest writes
        bells.remove(bell)
    entries = [b for b in bells.history if b.owner == "fn"]
    assert len(entries) == 1 and entries[0].kicks == 100
    for i in range(HISTORY_LIMIT + 100):
        bell = bells.add(
            pio=False, addr=0xC200_0000 + 16 * i, length=4, datamatch=None, callback=lambda n: None, owner="m"
        )
        bells.remove(bell)
    assert len(bells.history) <= HISTORY_LIMIT and bells.history_dropped > 0
    bells.close()
    loop.close()


def test_a_pending_completions_time_left_is_running_time_not_counting_a_pause() -> None:
    """Snapshot state (issue 18): the time a VM spent paused before the save is not work done."""
    now = [500.0]
    loop = EventLoop(clock=lambda: now[0])
    loop.start()
    try:
        dev = AsyncDemo(ASYNC_PIO, FakeIrqLine(), loop.call_later, delay=10.0)
        dev.ring()
        loop.run_sync(lambda: None)  # the completion's timer is in the loop's heap
        now[0] += 4
        loop.pause()
        now[0] += 60  # paused for a minute, then the snapshot is taken
        assert dev.save_state()["engine"]["remaining_us"] == 6_000_000
        loop.resume()
        now[0] += 1
        assert dev.save_state()["engine"]["remaining_us"] == 5_000_000 and dev.in_flight == 1
    finally:
        loop.close()


def test_kicks_held_by_a_pause_are_delivered_on_request() -> None:
    """What a snapshot does with the VM paused: a kick KVM caught just before the pause waits in the eventfd
    (the paused loop does not watch it); deliver_held hands it to the device so the saved state has it."""
    import os

    loop = EventLoop()
    loop.start()
    bells = Doorbells(None, loop)
    got: list[int] = []
    bell = bells.add(pio=True, addr=0x6100, length=2, datamatch=None, callback=got.append, owner="a")
    try:
        loop.pause()
        for _ in range(2):
            os.eventfd_write(bell.fd, 1)
        loop.run_sync(lambda: None)
        assert got == []  # held
        loop.run_sync(bells.deliver_held)
        assert got == [2] and bell.kicks == 2
        loop.resume()
        loop.run_sync(lambda: None)
        assert got == [2]  # nothing delivered twice
    finally:
        bells.close()
        loop.close()
