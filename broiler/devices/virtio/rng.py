"""virtio-rng, the entropy device (virtio 1.2 §5.4): one request queue; the device fills each chain's
writable buffers with random bytes and reports how many it wrote.

Work is bounded: at most ``MAX_BYTES_PER_REQUEST`` per chain (a driver asking for 4 GiB gets that many
and no more; the spec lets the device return fewer), and at most one queue's worth of chains per kick.
Random bytes are cheap, so requests are served on the thread that delivers the kick.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .chain import Memory
from .device import Notifier, VirtioDevice
from .queue import Virtqueue, VirtqueueError
from .spec import DEVICE_ENTROPY

MAX_BYTES_PER_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    device_type = DEVICE_ENTROPY
    name = "virtio-rng"
    state_fields = ()  # each request is served whole when kicked: nothing is held between kicks
    queue_max_sizes = (256,)

    def __init__(self, source: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.source = source
        self._lock = threading.Lock()
        self._memory: Memory | None = None
        self._queue: Virtqueue | None = None
        self._notifier: Notifier | None = None

    def activate(self, memory: Memory, queues: list[Virtqueue], notifier: Notifier, features: int) -> None:
        super().activate(memory, queues, notifier, features)
        with self._lock:
            self._memory, self._notifier = memory, notifier
            self._queue = queues[0] if queues[0].active else None

    def reset(self) -> None:
        with self._lock:
            self._memory = self._queue = self._notifier = None
        super().reset()

    def notify(self, queue_index: int) -> None:
        # The notifier is called after the lock is dropped: the transport holds its own lock while it
        # resets this device, so calling back into it under ours could deadlock.
        broken: str | None = None
        with self._lock:
            q, memory, notifier = self._queue, self._memory, self._notifier
            if q is None or memory is None or notifier is None:
                return
            try:
                interrupt = self._serve(q, memory) > 0 and q.needs_interrupt()
            except VirtqueueError as err:
                self.stats.errors += 1
                self._queue = None
                broken, interrupt = str(err), False
        if broken is not None:
            notifier.needs_reset(broken)
        elif interrupt:
            notifier.queue_used(0)

    def _serve(self, q: Virtqueue, memory: Memory) -> int:
        served = 0
        for _ in range(q.size):
            chain = q.pop()
            if chain is None:
                break
            want = min(chain.write_length, MAX_BYTES_PER_REQUEST)
            written = chain.write(memory, 0, self.source(want)) if want else 0
            q.push(chain.head, written)
            self.stats.requests += 1
            self.stats.bytes_read += written
            served += 1
        return served
