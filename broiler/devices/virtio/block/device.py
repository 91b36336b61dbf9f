"""virtio-blk (virtio 1.2 §5.2): one request queue over a raw image file.

Features: SEG_MAX, BLK_SIZE, FLUSH, RO (read-only images), DISCARD and WRITE_ZEROES (where the file
system can punch holes), plus the transport's VERSION_1, INDIRECT_DESC and EVENT_IDX.

Threads: ``notify`` (a kick, on the event-loop thread) only wakes the device's ``IoWorker``; the
worker pops chains, does the IO, writes the status, pushes the used element (after the file write
returned, so a completed write is in the file) and asks the transport for an interrupt. ``reset``
stops the worker and waits for it, so after reset nothing touches guest memory.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

from ....errors import BroilerError
from ..chain import Memory
from ..device import Notifier, VirtioDevice
from ..queue import Virtqueue, VirtqueueError
from ..spec import DEVICE_BLOCK, bit
from .disk import SECTOR, DiskImage
from .request import ID_BYTES, S_OK, Limits, execute
from .worker import IoWorker, Worker, WorkerFactory

F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH, F_DISCARD, F_WRITE_ZEROES = 2, 5, 6, 9, 13, 14
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # header and status take a descriptor each
RANGE_SEGMENTS = 16
RANGE_SECTORS = 0x3F_FFFF  # per segment, 2 GiB
CONFIG_SIZE = 0x3C  # up to write_zeroes_may_unmap and its padding


class VirtioBlock(VirtioDevice):
    device_type = DEVICE_BLOCK
    name = "virtio-blk"
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, disk: DiskImage, *, serial: str | None = None, name: str = "virtio-blk") -> None:
        super().__init__()
        self.disk = disk
        self.name = name
        text = disk.default_serial if serial is None else serial
        self.serial = text.encode().ljust(ID_BYTES, b"\0")[:ID_BYTES]
        ranges = RANGE_SEGMENTS if disk.can_punch else 0
        self.limits = Limits(RANGE_SECTORS if ranges else 0, ranges, RANGE_SECTORS if ranges else 0, ranges)
        self._negotiated = self.limits
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        # How the IO thread is made at activation: record/replay (vmm/record_virtio.py) wraps its work as a
        # recorded cause, or runs it only where the recording says it ran.
        self.worker_factory: WorkerFactory = IoWorker
        self._queue: Virtqueue | None = None
        self._memory: Memory | None = None
        self._notifier: Notifier | None = None

    def device_features(self) -> int:
        features = bit(F_SEG_MAX) | bit(F_BLK_SIZE) | bit(F_FLUSH)
        if self.disk.read_only:
            features |= bit(F_RO)
        if self.disk.can_punch:
            features |= bit(F_DISCARD) | bit(F_WRITE_ZEROES)
        return features

    def config(self) -> bytes:
        lim = self.limits
        cfg = bytearray(CONFIG_SIZE)
        struct.pack_into("<Q", cfg, 0x00, self.disk.sectors)  # capacity
        struct.pack_into("<I", cfg, 0x0C, SEG_MAX)
        struct.pack_into("<I", cfg, 0x14, SECTOR)  # blk_size
        struct.pack_into("<III", cfg, 0x24, lim.discard_sectors, lim.discard_segments, 1)  # alignment: 1 sector
        struct.pack_into("<IIB", cfg, 0x30, lim.zeroes_sectors, lim.zeroes_segments, 1 if lim.zeroes_segments else 0)
        return bytes(cfg)

    # -- lifecycle --------------------------------------------------------------------------------
    def activate(self, memory: Memory, queues: list[Virtqueue], notifier: Notifier, features: int) -> None:
        super().activate(memory, queues, notifier, features)
        limits = self.limits
        if not features & bit(F_DISCARD):
            limits = Limits(0, 0, limits.zeroes_sectors, limits.zeroes_segments)
        if not features & bit(F_WRITE_ZEROES):
            limits = Limits(limits.discard_sectors, limits.discard_segments, 0, 0)
        with self._lock:
            self._negotiated = limits
            self._memory, self._notifier = memory, notifier
            self._queue = queues[0] if queues[0].active else None
            if self._queue is not None:
                self._worker = self.worker_factory(f"{self.name}-io", self._drain)

    # -- snapshot ---------------------------------------------------------------------------------
    state_fields = ()  # the queue is the transport's; requests are drained before a save, never half done

    def save_state(self) -> dict[str, Any]:
        """Let the IO thread finish every request it has taken (the VM is paused: no new kicks), so the
        used ring and index the transport saves next are final and no request is half done."""
        worker = self._worker
        if worker is not None and not worker.wait_idle():
            raise BroilerError(f"{self.name}: the IO thread did not finish its requests in time for a snapshot")
        return {}

    def notify(self, queue_index: int) -> None:
        worker = self._worker
        if worker is not None:
            worker.kick()

    def reset(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()  # finishes the request in flight: its memory is not reused under it
        with self._lock:
            self._queue = self._memory = self._notifier = None
        super().reset()

    def close(self) -> None:
        self.reset()
        self.disk.close()

    # -- the IO thread ----------------------------------------------------------------------------
    def _drain(self) -> None:
        """Serve every available chain, interrupting once per batch of at most a queue's worth."""
        q, memory, notifier, worker = self._queue, self._memory, self._notifier, self._worker
        if q is None or memory is None or notifier is None or worker is None:
            return
        while not worker.stopping:
            try:
                served = self._serve_batch(q, memory, worker)
            except VirtqueueError as err:
                self.stats.errors += 1
                self._queue = None
                notifier.needs_reset(str(err))
                return
            if served and q.needs_interrupt():
                notifier.queue_used(0)
            if served < q.size:
                return

    def _serve_batch(self, q: Virtqueue, memory: Memory, worker: Worker) -> int:
        served = 0
        while served < q.size and not worker.stopping:
            chain = q.pop()
            if chain is None:
                break
            result = execute(chain, memory, self.disk, self.serial, self._negotiated)
            q.push(chain.head, result.used_len)
            self.stats.requests += 1
            self.stats.bytes_read += result.bytes_read
            self.stats.bytes_written += result.bytes_written
            if result.status != S_OK or result.used_len == 0:
                self.stats.errors += 1
            served += 1
        return served
