"""`broiler run --record FILE`: an observer (core/observe.py) that writes every device-visible event.

Events are grouped by cause: an access, a doorbell kick or a timer firing is written first, then what the
device did while handling it (DMA, interrupts, timers it set), so replay (vmm/replay.py) can drive the cause
and compare the effects. Causes are serialised while recording (one device handling at a time, see ``_serial``):
the file's order is then an order the devices really went through, which replay can follow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .. import __version__
from ..core.observe import LINE_IRQFD, LINE_PULSED, Observer, attach_observer
from . import recording as rec
from .config import MachineConfig
from .record_virtio import record_virtio, virtio_header

_ACCESS_KINDS = {
    ("pio", "r"): rec.PIO_READ,
    ("pio", "w"): rec.PIO_WRITE,
    ("mmio", "r"): rec.MMIO_READ,
    ("mmio", "w"): rec.MMIO_WRITE,
    ("coalesced", "p"): rec.COALESCED_PIO,
    ("coalesced", "m"): rec.COALESCED_MMIO,
    ("doorbell", "p"): rec.KICK_PIO,
    ("doorbell", "m"): rec.KICK_MMIO,
}


def recording_header(config: MachineConfig, device_texts: list[str], host: Any, guest: str) -> dict[str, Any]:
    """What replay needs to rebuild the same devices: the machine config and the device list."""
    devices = [[bus.name, r.base, r.size, r.name] for bus in (host.pio_bus, host.mmio_bus) for r in bus.regions()]
    return {
        "broiler": __version__,
        "format": rec.FORMAT_VERSION,
        "guest": guest,
        "config": {
            "mem_size": config.mem_size,
            "cpus": config.cpus,
            "demo_devices": config.demo_devices,
            "testdev": config.testdev,
            "irqchip": config.irqchip,
            "hpet": config.hpet,
            "async_delay": config.async_delay,
            "devices": device_texts,
        },
        "devices": devices,
        "virtio": virtio_header(config, host),
    }


class Recorder(Observer):
    def __init__(
        self,
        out: IO[bytes],
        header: dict[str, Any],
        *,
        limit: int | None = None,
        on_cut: Callable[[int], None] | None = None,
    ) -> None:
        self.writer = rec.RecordingWriter(out, header, limit, on_cut)
        self._lock = threading.Lock()
        # Held from a cause's start to its end: while recording, devices handle one cause at a time, so the
        # file's order is an order in which the causes really happened (a timer's work and a vCPU's read of
        # its result cannot overlap and be written the other way round). Device locks are only ever taken
        # inside it, so the lock order is fixed.
        self._serial = threading.Lock()
        self._local = threading.local()
        self._timer_ids = 0
        # A cause's events wait in memory until it ends: past this many bytes of DMA data the recording is cut
        # (a hostile guest's huge disk request must not grow broiler's memory beyond the file's own limit).
        self._group_limit = rec.DEFAULT_LIMIT if limit is None else limit
        self._t0 = time.monotonic_ns()
        self._last_ns = self._t0
        self.closed = False
        self._stopping: Callable[[], bool] = lambda: False

    def attach(self, host: Any) -> None:
        attach_observer(host, self)
        # Once the VM is stopping, interrupts are dropped (core/irq.py) and vCPUs race the shutdown: a cause
        # begun then would be recorded with effects that a replay, which never stops, does not reproduce.
        self._stopping = lambda: bool(getattr(host, "stopping", False))
        record_virtio(host, self)

    # -- events -------------------------------------------------------------------------------
    def _stack(self) -> tuple[list[Any], list[int]]:
        local = self._local
        if not hasattr(local, "group"):
            local.group, local.slots = [], []
        return local.group, local.slots

    def begin(self) -> None:
        group, slots = self._stack()
        if not slots:
            self._serial.acquire()
            self._local.late = self._stopping()
            self._local.data_bytes = 0
        slots.append(len(group))
        group.append(None)  # the cause's place: its event comes first, whenever it is known

    def background_cause(
        self, kind: int, value: int, work: Callable[[], None], give_up: Callable[[], bool], data: bytes = b""
    ) -> None:
        """Run a device thread's ``work`` as a recorded cause of its own (virtio-blk's IO thread serving its
        queue, console input arriving). It waits its turn like any cause, but gives up when ``give_up()`` says
        so: a vCPU resetting the device holds its own cause while it waits for this thread to stop."""
        while not self._serial.acquire(timeout=0.005):
            if give_up():
                return
        group, slots = self._stack()
        self._local.late = self._stopping()
        self._local.data_bytes = 0
        slots.append(len(group))
        group.append((kind, 0, len(data), value, data))
        try:
            work()
        finally:
            self.end()

    def end(self) -> None:
        group, slots = self._stack()
        slots.pop()
        if not slots:
            try:
                if not self._local.late:  # a cause begun after the VM started stopping is not recorded
                    self._write([e for e in group if e is not None])
            finally:
                group.clear()
                self._serial.release()

    def _add(self, event: tuple[int, int, int, int, bytes], cause: bool) -> None:
        group, slots = self._stack()
        if not slots:
            if not self._stopping():
                self._write([event])
        elif cause and group[slots[-1]] is None:
            group[slots[-1]] = event
        else:
            if event[4]:
                self._local.data_bytes += len(event[4])
                if self._local.data_bytes > self._group_limit:
                    with self._lock:
                        self.writer.cut_now()
                    return
            group.append(event)

    def _write(self, events: list[tuple[int, int, int, int, bytes]]) -> None:
        if not events:
            return
        now = time.monotonic_ns()
        with self._lock:
            if self.closed or self.writer.cut:
                return
            dt_us = max(0, now - self._last_ns) // 1000
            self._last_ns += dt_us * 1000  # the remainder carries on: times do not drift
            parts: list[bytes] = []
            size = 0
            for kind, addr, length, value, data in events:
                parts.append(rec.pack(kind, dt_us, addr, length, value) + data)
                size += rec.EVENT.size + len(data)
                dt_us = 0
                if size >= self.writer.chunk_bytes:  # a cause with much DMA data spans chunks of bounded size
                    self.writer.append(b"".join(parts), len(parts))
                    parts, size = [], 0
            if parts:
                self.writer.append(b"".join(parts), len(parts))

    def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
        if kind == "irq":
            if size == 4:
                self._add((rec.MSI, addr, 4, value or 0, b""), False)
            else:
                pulse = device in (LINE_PULSED, LINE_IRQFD)
                self._add((rec.IRQ_PULSE if pulse else rec.IRQ_LEVEL, addr, 0, value or 0, b""), False)
            return
        code = _ACCESS_KINDS.get((kind, rw))
        if code is not None:
            self._add((code, addr, size, value or 0, b""), True)

    def dma(self, rw: str, gpa: int, data: bytes) -> None:
        self._add((rec.DMA_READ if rw == "r" else rec.DMA_WRITE, gpa, len(data), 0, data), False)

    def entropy(self, data: bytes) -> None:
        """Random bytes a virtio-rng device got from the host (an input, like a clock reading)."""
        self._add((rec.ENTROPY, 0, len(data), 0, data), False)

    def console_room(self, room: int) -> int:
        """The room a virtio-console's output pump had (an input: it decides how much output is taken)."""
        self._add((rec.CONSOLE_ROOM, 0, 0, room, b""), False)
        return room

    def disk(self, offset: int, length: int, value: int) -> None:
        """What a virtio-blk device did to its image (vmm/record_virtio.py's ObservedDisk)."""
        self._add((rec.DISK, offset, length, value, b""), False)

    def timer(self, fn: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._timer_ids += 1
            timer_id = self._timer_ids
        self._add((rec.TIMER_SET, 0, 0, timer_id, b""), False)

        def fired() -> None:
            self.begin()
            try:
                self._add((rec.TIMER_FIRED, 0, 0, timer_id, b""), True)
                fn()
            finally:
                self.end()

        return fired

    def clock(self, source: int, value: int) -> int:
        self._add((rec.CLOCK, source, 0, value, b""), False)
        return value

    def sleep(self) -> None:
        self._add((rec.S3_SLEEP, 0, 0, 0, b""), False)

    def wake(self, by_rtc: bool) -> None:
        self._add((rec.S3_WAKE, 0, 0, int(by_rtc), b""), True)

    def close(self) -> None:
        """Write what is left and the end marker; events after this are dropped (the VM is stopping)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.writer.close()
