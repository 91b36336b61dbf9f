"""virtio-console at the queue level, no KVM: transmit reaches the sink exactly and in order; a slow
sink holds the guest's buffers instead of growing host memory; receive fills guest buffers; input
with no buffer is held, bounded; the PCI function and the console's counters."""

from __future__ import annotations

import fcntl
import os
import threading
import time

from broiler.core.eventloop import EventLoop
from broiler.devices.virtio.console import INPUT_LIMIT, OUTPUT_LIMIT, RECEIVEQ, TRANSMITQ, VirtioConsole
from broiler.devices.virtio.output_pump import OutputPump
from broiler.devices.virtio.pci import VirtioPci
from broiler.devices.virtio.queue import Virtqueue
from broiler.frontend.console import HOLD_LIMIT, TerminalConsole
from tests.unit.virtio_driver import Buf, Driver, guest_ram

WAIT = 30.0  # generous bound for a thread handoff; a failing test fails here instead of hanging


class Notes:
    """The transport side: which queues were signalled, and any reset request."""

    def __init__(self) -> None:
        self.used: list[int] = []
        self.broken: list[str] = []

    def queue_used(self, queue_index: int) -> None:
        self.used.append(queue_index)

    def needs_reset(self, reason: str) -> None:
        self.broken.append(reason)


class Sink:
    """Collects output; ``gate`` (when given) blocks each write until the test opens it."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.data = bytearray()
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, chunk: bytes) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        self.data += chunk


def rig(sink: Sink, size: int = 8) -> tuple[VirtioConsole, Driver, Driver, Notes]:
    mem = guest_ram()
    dev = VirtioConsole(sink)
    queues = [Virtqueue(m) for m in dev.queue_max_sizes]
    rx = Driver(mem, queues[RECEIVEQ], size)
    tx = Driver(mem, queues[TRANSMITQ], size, ring_offset=0x4000, data_at=0x200000)
    for q in queues:
        q.activate(mem, event_idx=False, indirect=False)
    notes = Notes()
    dev.activate(mem, queues, notes, 0)
    return dev, rx, tx, notes


def test_transmit_reaches_the_sink_exactly_and_in_order() -> None:
    sink = Sink()
    dev, _, tx, notes = rig(sink)
    heads = [tx.add([Buf(b"hello, "), Buf(b"hvc0")])[0], tx.add([Buf(b"!\n")])[0]]
    dev.notify(TRANSMITQ)
    assert tx.used() == [(heads[0], 0), (heads[1], 0)]  # a transmit buffer gets nothing written
    assert notes.used == [TRANSMITQ] and not notes.broken
    assert dev.pump.flush(WAIT)
    assert bytes(sink.data) == b"hello, hvc0!\n"
    assert dev.stats.bytes_written == 13 and dev.stats.requests == 2
    dev.close()


def test_slow_sink_holds_guest_buffers_and_memory_stays_bounded() -> None:
    gate = threading.Event()
    sink = Sink(gate)
    dev, _, tx, notes = rig(sink)
    first = bytes([0x41]) * 1000
    tx.add([Buf(first)])
    dev.notify(TRANSMITQ)
    assert sink.entered.wait(WAIT)  # the pump's thread is now stuck in the sink with 1000 bytes
    big = bytes(i % 251 for i in range(OUTPUT_LIMIT + 5000))
    head, _ = tx.add([Buf(big[: OUTPUT_LIMIT // 2]), Buf(big[OUTPUT_LIMIT // 2 :])])
    dev.notify(TRANSMITQ)
    # The pump took what fits; the chain is held, not returned, and no more is copied.
    assert dev.pump.room() == 0
    assert [u[0] for u in tx.used()] == [0]
    dev.notify(TRANSMITQ)  # a second kick while full changes nothing
    assert dev.pump.room() == 0 and tx.used() == []
    gate.set()  # stdout drains: the pump resumes the queue from its own thread
    assert dev.pump.flush(WAIT)
    assert bytes(sink.data) == first + big
    assert tx.used() == [(head, 0)]
    assert notes.used.count(TRANSMITQ) == 2 and not notes.broken
    dev.close()


def test_receive_fills_guest_buffers() -> None:
    dev, rx, _, notes = rig(Sink())
    heads = [rx.add([Buf(length=4, writable=True)])[0] for _ in range(2)]
    dev.feed(b"abcdef")
    used = rx.used()
    assert [u[1] for u in used] == [4, 2] and [u[0] for u in used] == heads
    # The bytes landed in the buffers the driver gave, split across them.
    assert rx.mem.read(0x100000, 4) == b"abcd" and rx.mem.read(0x100010, 2) == b"ef"
    assert notes.used == [RECEIVEQ] and dev.stats.bytes_read == 6
    dev.close()


def test_input_without_buffers_is_held_then_delivered_and_bounded() -> None:
    dev, rx, _, notes = rig(Sink())
    rooms: list[int] = []
    dev.on_room = lambda: rooms.append(1)
    assert dev.feed(b"x" * (INPUT_LIMIT - 10)) == INPUT_LIMIT - 10
    assert dev.feed(b"y" * 30) == 10  # what fits is taken; the feeder keeps the other 20
    assert rx.used() == [] and notes.used == []  # no buffer: nothing popped, nothing signalled
    rx.add([Buf(length=INPUT_LIMIT // 2 - 16, writable=True)])
    dev.notify(RECEIVEQ)
    assert rx.used() == [(0, INPUT_LIMIT // 2 - 16)] and rooms == []  # still more than half held
    for _ in range(2):
        rx.add([Buf(length=INPUT_LIMIT, writable=True)])
    dev.notify(RECEIVEQ)
    assert rooms == [1]  # down to half (here: empty) after a refusal: the feeder hears of it once
    assert rx.used() == [(1, INPUT_LIMIT // 2 + 16)]  # the rest of the held input in one buffer; one stays
    assert rx.mem.read(0x100000, INPUT_LIMIT) == b"x" * (INPUT_LIMIT - 10) + b"y" * 10
    assert dev.feed(b"z") == 1
    assert rx.used() == [(2, 1)] and rooms == [1]
    dev.close()


def test_input_before_driver_ok_waits_for_activation() -> None:
    mem = guest_ram()
    dev = VirtioConsole(Sink())
    dev.feed(b"early")
    queues = [Virtqueue(m) for m in dev.queue_max_sizes]
    rx = Driver(mem, queues[RECEIVEQ], 8)
    Driver(mem, queues[TRANSMITQ], 8, ring_offset=0x4000, data_at=0x200000)
    rx.add([Buf(length=16, writable=True)])
    for q in queues:
        q.activate(mem, event_idx=False, indirect=False)
    dev.activate(mem, queues, Notes(), 0)
    assert rx.used() == [(0, 5)] and mem.read(0x100000, 5) == b"early"
    dev.close()


def test_reset_drops_the_held_chain_but_keeps_its_output() -> None:
    gate = threading.Event()
    sink = Sink(gate)
    dev, _, tx, _ = rig(sink)
    tx.add([Buf(b"a" * (OUTPUT_LIMIT + 100))])
    dev.notify(TRANSMITQ)
    dev.reset()  # the guest's memory is no longer touched; what was copied still goes out
    gate.set()
    assert dev.pump.flush(WAIT)
    assert bytes(sink.data) == b"a" * OUTPUT_LIMIT and tx.used() == []
    dev.close()


def test_broken_sink_drops_and_never_blocks() -> None:
    def broken(chunk: bytes) -> None:
        raise BrokenPipeError

    pump = OutputPump(broken, 16, lambda: None, "t")
    pump.put(b"0123456789")
    assert pump.flush(WAIT)
    pump.put(b"abc")
    assert pump.flush(WAIT) and pump.dropped == 13 and pump.delivered == 0 and pump.room() == 16
    pump.close()


def test_hostile_transmit_chain_asks_for_reset() -> None:
    dev, _, tx, notes = rig(Sink())
    tx.write_desc(tx.desc_at, 0, 0xFFFF_0000, 64, 0, 0)  # a buffer outside RAM
    tx.publish(0)
    dev.notify(TRANSMITQ)
    assert notes.broken and dev.stats.errors == 1
    dev.notify(TRANSMITQ)  # the queue is off now
    assert len(notes.broken) == 1
    dev.close()


def test_pci_function_ids_and_counters() -> None:
    dev = VirtioConsole(Sink())
    fn = VirtioPci(dev, memory=guest_ram(), msi_sink=lambda m: None, intx=None)
    assert fn.config.get(0, 2) == 0x1AF4 and fn.config.get(2, 2) == 0x1003  # transitional console
    assert fn.config.get(0x2E, 2) == 3  # subsystem id = device type
    assert len(fn.transport.queues) == 2
    stats = fn.stats()
    assert stats["output_dropped"] == 0 and stats["kicks"] == 0 and "input_dropped" not in stats  # none is
    fn.close()


def test_a_slow_guest_gets_every_byte_through_the_receiveq() -> None:
    """10,000 bytes from a pipe through TerminalConsole into a receiveq whose driver gives four 16-byte
    buffers at a time: nothing is lost or reordered, the held input did fill (the device refused some), and
    the console never held more than 4 KiB."""
    dev, rx, _, _ = rig(Sink())
    typed = bytes(32 + (i * 7 + i // 95) % 95 for i in range(10_000))
    offers: list[tuple[int, int]] = []
    plain_feed = dev.feed

    def feed(data: bytes) -> int:
        offers.append((len(data), plain_feed(data)))
        return offers[-1][1]

    dev.feed = feed  # type: ignore[method-assign]
    got = bytearray()
    most_held = 0
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 16)
    os.write(w, typed)
    os.close(w)
    loop = EventLoop()
    loop.start()
    try:
        console = TerminalConsole(dev, loop, lambda: None, stdin_fd=r)

        def guest() -> None:  # a driver refilling the receiveq and kicking it, from its own thread
            nonlocal most_held
            buffers: dict[int, int] = {}
            deadline = time.monotonic() + WAIT
            while len(got) < len(typed) and time.monotonic() < deadline:
                most_held = max(most_held, console.held)
                for head, written in rx.used():
                    got.extend(rx.mem.read(buffers.pop(head), written))
                while len(buffers) < 4:
                    head, addrs = rx.add([Buf(length=16, writable=True)])
                    buffers[head] = addrs[0]
                dev.notify(RECEIVEQ)
                time.sleep(0.002)

        driver = threading.Thread(target=guest, name="fake-vcpu")
        console.start()
        driver.start()
        driver.join()
        console.restore()
    finally:
        loop.stop()
        loop.close()
        os.close(r)
        dev.close()
    assert bytes(got) == typed
    assert any(taken < offered for offered, taken in offers)
    assert max(offered for offered, _ in offers) <= HOLD_LIMIT and most_held <= HOLD_LIMIT
