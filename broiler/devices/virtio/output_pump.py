"""A bounded byte buffer between a device and a sink that may block (a terminal, a pipe, a file).

The device copies guest output in with ``put`` only while ``room()`` says there is space, so host
memory for output never exceeds ``limit`` bytes, however fast the guest writes and however slow the
sink is. A thread of its own (started on the first ``put``, so a machine that never prints starts
none) hands the bytes to the sink, outside every lock, then calls ``on_room`` so the device can take
more of the guest's buffers. The sink's thread never touches guest memory, so a device reset never
waits for a stuck terminal.

A sink that fails (stdout closed, EPIPE) stops being called; later output is counted as dropped
rather than blocking the guest forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class OutputPump:
    def __init__(self, sink: Callable[[bytes], None], limit: int, on_room: Callable[[], None], name: str) -> None:
        self.sink = sink
        self.limit = limit
        self.on_room = on_room
        self.name = name
        self._cond = threading.Condition()
        self._buffer = bytearray()
        self._in_flight = 0  # bytes taken by the thread and not yet through the sink
        self._closing = False
        self._resuming = False  # on_room is running and may put more: flush must not return yet
        self._thread: threading.Thread | None = None
        self.delivered = 0  # bytes the sink accepted
        self.dropped = 0  # bytes lost because the sink failed

    def room(self) -> int:
        with self._cond:
            return 0 if self._closing else self.limit - len(self._buffer) - self._in_flight

    def put(self, data: bytes) -> None:
        """Queue ``data``; the caller has checked ``room()`` (a larger put is cut to the room left)."""
        with self._cond:
            if self._closing:
                self.dropped += len(data)
                return
            take = min(len(data), max(0, self.limit - len(self._buffer) - self._in_flight))
            self._buffer += data[:take]
            self.dropped += len(data) - take
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"broiler-{self.name}-out", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        broken = False
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if not self._buffer:
                    return
                chunk = bytes(self._buffer)
                self._buffer.clear()
                self._in_flight = len(chunk)
            if not broken:
                try:
                    self.sink(chunk)
                except (OSError, ValueError):  # EPIPE, a closed file: keep draining, never block the guest
                    broken = True
            with self._cond:
                self._in_flight = 0
                if broken:
                    self.dropped += len(chunk)
                else:
                    self.delivered += len(chunk)
                self._resuming = True
            try:
                self.on_room()
            finally:
                with self._cond:
                    self._resuming = False
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far went through the sink; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._buffer or self._in_flight or self._resuming), timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is buffered (waiting at most ``timeout`` for a stuck sink), then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
