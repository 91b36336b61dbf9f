"""virtio-console (virtio 1.2 §5.3) with one port and no MULTIPORT: queue 0 is the receiveq (host to
guest), queue 1 the transmitq (guest to host). Linux binds it as /dev/hvc0.

Output is never lost and never costs unbounded memory: transmit buffers are copied into an
``OutputPump`` only while it has room. When it is full the device stops taking the guest's buffers;
a chain it has started stays held (with how far it got) and is returned to the guest only once all
its bytes are in the pump. When the sink makes room, the pump's thread resumes the queue. That is
the back-pressure a virtqueue exists for: a guest writing faster than stdout drains waits on its ring.

Input (``feed``, from whatever owns the terminal) goes into the receiveq's buffers. Bytes that arrive
while the guest has given no buffer are held, up to ``INPUT_LIMIT``. Input is never dropped: ``feed``
returns how many bytes it took, and a feeder told "not all" keeps the rest until ``on_room``, which the
device calls (from the thread that gave held input to the guest, with no lock held) once the held input
is down to half: the same back-pressure as the UART's (devices/legacy/serial.py).

Locks: ``_lock`` guards the queues and the held state; the notifier is called after it is dropped,
because the transport holds its own lock while it resets this device.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

from ...core.state import check_keys, take_bytes, take_int, take_list
from ...errors import SnapshotError
from .chain import Chain, Memory
from .device import Notifier, VirtioDevice
from .output_pump import OutputPump
from .queue import Virtqueue, VirtqueueError
from .spec import DEVICE_CONSOLE

RECEIVEQ, TRANSMITQ = 0, 1
OUTPUT_LIMIT = 64 * 1024  # guest output waiting for the sink, at most
INPUT_LIMIT = 4096  # input waiting for a receive buffer, at most
_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr (only with the matching features)
INPUT, ROOM = "input", "room"  # the host events that reach the queues outside any guest access


def run_now(event: str, data: bytes, work: Callable[[], None]) -> None:
    work()


class VirtioConsole(VirtioDevice):
    device_type = DEVICE_CONSOLE
    name = "virtio-console"
    state_fields = ()  # see save_state
    queue_max_sizes = (256, 256)

    def __init__(self, output: Callable[[bytes], None], name: str = "virtio-console") -> None:
        super().__init__()
        self.name = name
        self.pump = OutputPump(output, OUTPUT_LIMIT, self._room_freed, name)
        self._lock = threading.Lock()
        self._memory: Memory | None = None
        self._queues: list[Virtqueue | None] = [None, None]
        self._notifier: Notifier | None = None
        self._held: tuple[Chain, int] | None = None  # a transmit chain partly copied out, and how far
        self._input = bytearray()
        # Who to tell that held input went down to half after a feed was refused (host state: not saved).
        self.on_room: Callable[[], None] | None = None
        self._refused = False
        # How a host event (INPUT arriving, the pump making ROOM) reaches the queues: now, or while recording
        # as a cause of its own (vmm/record_virtio.py), so replay can run it at the same point.
        self.host_event: Callable[[str, bytes, Callable[[], None]], None] = run_now

    # -- snapshot ---------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        """Held input, and the transmit chain partly copied out (its head and how far): output already in
        the pump belongs to the host side and is delivered before the save returns (bounded wait)."""
        self.pump.flush(2.0)
        with self._lock:
            held = None if self._held is None else [self._held[0].head, self._held[1]]
            return {"input": bytes(self._input), "held": held}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("input", "held"), self.name)
        data = take_bytes(saved, "input", self.name, most=INPUT_LIMIT)
        held = None
        if saved["held"] is not None:
            items = take_list(saved, "held", self.name, 2)
            q = self._queues[TRANSMITQ]
            if len(items) != 2 or q is None:
                raise SnapshotError(f"{self.name}: a held transmit chain without an active transmit queue")
            head, done = (take_int({"v": v}, "v", self.name, 32) for v in items)
            try:
                chain = q.walk(head)
            except VirtqueueError as err:
                raise SnapshotError(f"{self.name}: held transmit chain: {err}") from None
            if done > chain.read_length:
                raise SnapshotError(f"{self.name}: {done} bytes of a {chain.read_length}-byte chain sent")
            held = (chain, done)
        with self._lock:
            self._input, self._held = bytearray(data), held

    def config(self) -> bytes:
        return _CONFIG.pack(0, 0, 1, 0)

    def extra_stats(self) -> dict[str, int]:
        return {
            "output_dropped": self.pump.dropped,
            "output_delivered": self.pump.delivered,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def activate(self, memory: Memory, queues: list[Virtqueue], notifier: Notifier, features: int) -> None:
        super().activate(memory, queues, notifier, features)
        with self._lock:
            self._memory, self._notifier = memory, notifier
            self._queues = [q if q.active else None for q in queues[:2]]
            self._held = None
        self._run(RECEIVEQ)  # input typed before the driver was ready

    def reset(self) -> None:
        # Output already in the pump still reaches the sink; held input waits for the next driver.
        with self._lock:
            self._memory = self._notifier = self._held = None
            self._queues = [None, None]
        super().reset()

    def close(self) -> None:
        self.reset()
        self.pump.close()

    # -- the two directions -----------------------------------------------------------------------
    def notify(self, queue_index: int) -> None:
        if queue_index in (RECEIVEQ, TRANSMITQ):
            self._run(queue_index)

    def feed(self, data: bytes) -> int:
        """Input for the guest (any thread): delivered now if it has buffers, else held up to INPUT_LIMIT.
        Returns how many of the first bytes were taken; when not all, ``on_room`` follows later."""
        taken = 0

        def take() -> None:
            nonlocal taken
            taken = self._take_input(data)

        # Room is measured inside the event, so a recording's "console input" holds what was offered and
        # replay, offering the same to the same state, takes the same part.
        self.host_event(INPUT, data, take)
        return taken

    def _take_input(self, data: bytes) -> int:
        with self._lock:
            take = min(max(0, INPUT_LIMIT - len(self._input)), len(data))
            self._input += data[:take]
            if take < len(data):
                self._refused = True
        self._run(RECEIVEQ)
        return take

    def _room_freed(self) -> None:
        """The pump's thread made room: take more of the guest's output."""
        self.host_event(ROOM, b"", self.resume_transmit)

    def resume_transmit(self) -> None:
        """Take more of the guest's output (the pump has room again)."""
        self._run(TRANSMITQ)

    def _run(self, index: int) -> None:
        broken: str | None = None
        interrupt = False
        wake: Callable[[], None] | None = None
        with self._lock:
            q, memory, notifier = self._queues[index], self._memory, self._notifier
            if q is None or memory is None or notifier is None:
                return
            try:
                served = self._receive(q, memory) if index == RECEIVEQ else self._transmit(q, memory)
                interrupt = served > 0 and q.needs_interrupt()
            except VirtqueueError as err:
                self.stats.errors += 1
                self._queues[index] = None
                broken = str(err)
            if self._refused and len(self._input) <= INPUT_LIMIT // 2:
                self._refused, wake = False, self.on_room
        if wake is not None:
            wake()
        if broken is not None:
            notifier.needs_reset(broken)
        elif interrupt:
            notifier.queue_used(index)

    def _receive(self, q: Virtqueue, memory: Memory) -> int:
        """Fill receive buffers with held input; a buffer is popped only when there is input for it."""
        served = 0
        while self._input and served < q.size:
            chain = q.pop()
            if chain is None:
                break
            written = chain.write(memory, 0, bytes(self._input[: chain.write_length]))
            del self._input[:written]
            q.push(chain.head, written)
            self.stats.requests += 1
            self.stats.bytes_read += written
            served += 1
        return served

    def _transmit(self, q: Virtqueue, memory: Memory) -> int:
        """Copy transmit buffers into the pump while it has room; returns the chains completed.

        At most one queue's worth of chains per call, so a guest cannot keep this thread forever."""
        served = 0
        for _ in range(q.size):
            room = self.pump.room()
            if self._held is None:
                if room <= 0:
                    break
                chain = q.pop()
                if chain is None:
                    break
                self._held = (chain, 0)
            chain, done = self._held
            take = min(chain.read_length - done, room)
            if take > 0:
                self.pump.put(chain.read(memory, done, take))
                self.stats.bytes_written += take
                done += take
            if done < chain.read_length:
                self._held = (chain, done)
                break
            self._held = None
            q.push(chain.head, 0)  # the device wrote nothing into a transmit buffer
            self.stats.requests += 1
            served += 1
        return served
