"""Record and replay of virtio-blk (docs/record-replay.md, "virtio").

Three things make a virtio-blk run recordable:

- **Its guest memory is observed.** While recording, every virtio function's transport is handed the
  machine's ``dma_memory`` instead of its plain RAM, so ring reads and writes are DMA events; the data
  buffers, which the device reaches through live views, are reported by ``Chain.note_*`` around the disk call.
  Without ``--record`` the transport keeps plain RAM: nothing is tested per access.
- **Its disk is an input.** ``ObservedDisk`` reports each call on the image as a DISK event (operation, offset,
  length, bytes moved); a read's data are the DMA writes that follow it. Replay's ``ReplayDisk`` answers from
  those events, so replay needs no image, and a changed model that reads or writes elsewhere diverges there.
- **Its IO thread's work is a cause.** Completions happen on the device's own thread, outside any guest
  access; while recording, each wake of that thread runs as a VIRTIO_WORK cause (``Recorder.background_cause``),
  and replay runs the device's work exactly there (``ReplayWorker`` never runs by itself).
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..devices.virtio.block import DiskImage, VirtioBlock
from ..devices.virtio.block.worker import IoWorker, Worker, WorkerFactory
from ..devices.virtio.pci import TransportKind
from ..devices.virtio.rng import VirtioRng
from ..errors import ConfigError
from . import recording as rec
from .config import MachineConfig
from .virtio import DiskSpec, virtio_functions


class DiskSink(Protocol):
    def disk(self, offset: int, length: int, value: int) -> None: ...


class EntropySink(Protocol):
    def entropy(self, data: bytes) -> None: ...


class CauseRunner(Protocol):
    def background_cause(
        self, kind: int, value: int, work: Callable[[], None], give_up: Callable[[], bool]
    ) -> None: ...


def virtio_blocks(host: Any) -> list[VirtioBlock]:
    return [fn.device for fn in virtio_functions(host.pci) if isinstance(fn.device, VirtioBlock)]


def virtio_header(config: MachineConfig, host: Any) -> dict[str, Any]:
    """What replay needs to build the same virtio-blk functions without their images."""
    disks = []
    for spec, block in zip(config.disks, virtio_blocks(host), strict=True):
        image = block.disk
        disks.append(
            {
                "path": spec.path,
                "read_only": spec.read_only,
                "serial": spec.serial,
                "size": image.size,
                "can_punch": image.can_punch,
                "default_serial": image.default_serial,
            }
        )
    return {"transport": config.virtio_transport.value, "disks": disks, "rng": config.virtio_rng}


def replay_virtio_config(config: MachineConfig, saved: Any) -> None:
    """Set ``config``'s disks from a header's "virtio" section; each is opened as a ``ReplayDisk``."""
    if saved is None:
        return  # before format 3: no virtio devices
    try:
        config.virtio_transport = TransportKind(saved["transport"])
        infos = [dict(d) for d in saved["disks"]]
        config.disks = [DiskSpec(str(d["path"]), bool(d["read_only"]), d["serial"]) for d in infos]
        disks = [ReplayDisk(d) for d in infos]
        config.virtio_rng = bool(saved.get("rng", False))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the recording's header has a malformed virtio section ({exc!r})") from None
    opened = iter(disks)
    config.open_disk = lambda spec: next(opened)


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


def virtio_rngs(host: Any) -> list[VirtioRng]:
    return [fn.device for fn in virtio_functions(host.pci) if isinstance(fn.device, VirtioRng)]


def recorded_source(source: Callable[[int], bytes], sink: EntropySink) -> Callable[[int], bytes]:
    def recorded(count: int) -> bytes:
        data = source(count)
        sink.entropy(data)
        return data

    return recorded


def record_virtio(host: Any, recorder: Any) -> None:
    """Make ``host``'s virtio-blk and virtio-rng devices recordable (before the guest runs: no queue is active)."""
    for fn in virtio_functions(host.pci):
        fn.transport.memory = host.dma_memory
    for index, block in enumerate(virtio_blocks(host)):
        block.disk = ObservedDisk(block.disk, index, recorder)
        block.worker_factory = recording_worker_factory(recorder, index)
    for rng in virtio_rngs(host):
        rng.source = recorded_source(rng.source, recorder)


class ReplaySink(DiskSink, EntropySink, Protocol):
    pass


class VirtioReplay:
    """Replay's side of the virtio devices: the disks' feed, their IO work, and the rng's recorded bytes."""

    def __init__(self, host: Any, sink: ReplaySink) -> None:
        self.feed = DiskFeed()
        self.entropy: deque[bytes] = deque()  # the random bytes recorded for the cause being driven
        self.workers: dict[int, ReplayWorker] = {}
        self._sink = sink
        for rng in virtio_rngs(host):
            rng.source = self._random
        for fn in virtio_functions(host.pci):
            fn.transport.memory = host.dma_memory
        for index, block in enumerate(virtio_blocks(host)):
            if isinstance(block.disk, ReplayDisk):
                block.disk.index, block.disk.feed = index, self.feed
            block.disk = ObservedDisk(block.disk, index, sink)
            block.worker_factory = self._factory(index)

    def _factory(self, index: int) -> WorkerFactory:
        def make(name: str, work: Callable[[], None]) -> Worker:
            self.workers[index] = worker = ReplayWorker(work)
            return worker

        return make

    def load(self, effects: list[rec.Event]) -> None:
        """The recorded inputs of the cause about to be driven."""
        if self.workers:
            self.feed.load(effects)
        self.entropy = deque(event.data for event in effects if event.kind == rec.ENTROPY)

    def _random(self, count: int) -> bytes:
        """What the recording's rng got; a model asking for another count gets zeros (and diverges)."""
        data = self.entropy.popleft() if self.entropy else b""
        if len(data) != count:
            data = bytes(count)
        self._sink.entropy(data)
        return data

    def work(self, index: int) -> bool:
        """Run device ``index``'s IO work; False if it has no live IO thread now."""
        worker = self.workers.get(index)
        if worker is None or worker.stopping:
            return False
        worker.work()
        return True
