"""virtio-blk under record and replay: its disk calls as DISK events and its IO thread's wakes as causes.

``ObservedDisk`` reports each call on an image (the real one while recording, ``ReplayDisk`` in replay) as a
DISK event. ``ReplayDisk`` has no image: it answers each call from the recording through a ``DiskFeed`` (a
read's bytes are the DMA writes that follow its DISK event). ``recording_worker_factory`` makes IO threads whose
every wake is a VIRTIO_WORK cause; ``ReplayWorker`` never runs by itself. See vmm/record_virtio.py.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..devices.virtio.block import DiskImage
from ..devices.virtio.block.worker import IoWorker, Worker, WorkerFactory
from . import recording as rec


class DiskSink(Protocol):
    def disk(self, offset: int, length: int, value: int) -> None: ...


class CauseRunner(Protocol):
    def background_cause(
        self, kind: int, value: int, work: Callable[[], None], give_up: Callable[[], bool], data: bytes = b""
    ) -> None: ...


# -- recording and replay: the disk -----------------------------------------------------------------
class ObservedDisk(DiskImage):
    """A disk image that reports each call to ``sink`` (the Recorder, or replay's effects) as a DISK event."""

    def __init__(self, inner: DiskImage, index: int, sink: DiskSink) -> None:  # not super(): nothing to open
        self.inner, self.index, self.sink = inner, index, sink
        self.path, self.read_only, self.fd = inner.path, inner.read_only, inner.fd
        self.size, self.default_serial, self.can_punch = inner.size, inner.default_serial, inner.can_punch

    def _call(self, op: int, offset: int, length: int, call: Callable[[], int | None]) -> int:
        try:
            result = call() or 0  # flush, discard and write_zeroes move no bytes: 0
        except OSError as err:
            self.sink.disk(offset, length, rec.disk_value(op, self.index, err.errno or errno.EIO, failed=True))
            raise
        self.sink.disk(offset, length, rec.disk_value(op, self.index, result))
        return result

    def readv(self, views: Sequence[memoryview], offset: int) -> int:
        return self._call(rec.DISK_READ, offset, sum(map(len, views)), lambda: self.inner.readv(views, offset))

    def writev(self, views: Sequence[memoryview], offset: int) -> int:
        return self._call(rec.DISK_WRITE, offset, sum(map(len, views)), lambda: self.inner.writev(views, offset))

    def flush(self) -> None:
        self._call(rec.DISK_FLUSH, 0, 0, lambda: self.inner.flush())

    def discard(self, offset: int, length: int) -> None:
        self._call(rec.DISK_DISCARD, offset, length, lambda: self.inner.discard(offset, length))

    def write_zeroes(self, offset: int, length: int) -> None:
        self._call(rec.DISK_ZEROES, offset, length, lambda: self.inner.write_zeroes(offset, length))

    def close(self) -> None:
        self.inner.close()


class DiskFeed:
    """The DISK events of the cause being replayed, in order, each with the bytes a read brought in."""

    def __init__(self) -> None:
        self.entries: deque[tuple[rec.Event, bytes]] = deque()

    def load(self, effects: Iterable[rec.Event]) -> None:
        self.entries.clear()
        pending: list[Any] | None = None  # [event, data parts, bytes still to come] of a read
        for event in effects:
            if pending is not None and event.kind == rec.DMA_WRITE and pending[2] > 0:
                pending[1].append(event.data)
                pending[2] -= len(event.data)
                continue
            if pending is not None:
                self.entries.append((pending[0], b"".join(pending[1])))
                pending = None
            if event.kind == rec.DISK:
                op, _, result, failed = rec.split_disk_value(event.value)
                pending = [event, [], result if op == rec.DISK_READ and not failed else 0]
        if pending is not None:
            self.entries.append((pending[0], b"".join(pending[1])))

    def take(self, disk: int, op: int, offset: int, length: int) -> tuple[int, bytes]:
        """(bytes moved, data) of the next recorded call if it is this one; else an IO error (the device's
        DISK event then differs from the recording's, which replay reports)."""
        if self.entries:
            event, data = self.entries[0]
            rec_op, rec_disk, result, failed = rec.split_disk_value(event.value)
            if (rec_disk, rec_op, event.addr, event.size) == (disk, op, offset, length):
                self.entries.popleft()
                if failed:
                    raise OSError(result, "failed in the recording")
                return result, data
        raise OSError(errno.EIO, "not what the recording did")


class ReplayDisk(DiskImage):
    """A disk with no image: the same size and features as the recorded one; calls answer from a DiskFeed."""

    def __init__(self, info: dict[str, Any]) -> None:  # not super(): nothing to open
        self.path, self.read_only, self.fd = str(info["path"]), bool(info["read_only"]), -1
        self.size, self.can_punch = int(info["size"]), bool(info["can_punch"])
        self.default_serial = str(info["default_serial"])
        self.index = 0
        self.feed = DiskFeed()

    def readv(self, views: Sequence[memoryview], offset: int) -> int:
        result, data = self.feed.take(self.index, rec.DISK_READ, offset, sum(map(len, views)))
        pos = 0
        for view in views:
            n = max(0, min(len(view), len(data) - pos))
            view[:n] = data[pos : pos + n]
            pos += n
        return result

    def writev(self, views: Sequence[memoryview], offset: int) -> int:
        return self.feed.take(self.index, rec.DISK_WRITE, offset, sum(map(len, views)))[0]

    def flush(self) -> None:
        self.feed.take(self.index, rec.DISK_FLUSH, 0, 0)

    def discard(self, offset: int, length: int) -> None:
        self.feed.take(self.index, rec.DISK_DISCARD, offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.feed.take(self.index, rec.DISK_ZEROES, offset, length)

    def close(self) -> None:
        return None


# -- recording and replay: the IO thread ------------------------------------------------------------
def recording_worker_factory(recorder: CauseRunner, index: int) -> WorkerFactory:
    """IO threads whose every wake is a VIRTIO_WORK cause of block device ``index``."""

    def make(name: str, work: Callable[[], None]) -> Worker:
        workers: list[Worker] = []  # filled before the first kick can wake the thread

        def recorded() -> None:
            recorder.background_cause(rec.VIRTIO_WORK, index, work, lambda: workers[0].stopping)

        worker = IoWorker(name, recorded)
        workers.append(worker)
        return worker

    return make


class ReplayWorker:
    """An IO 'thread' that never runs by itself: replay calls ``work`` where the recording's VIRTIO_WORK is."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self._stopping = False

    def kick(self) -> None:
        return None

    def stop(self, timeout: float = 10.0) -> bool:
        self._stopping = True
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return True
