"""Record and replay of virtio devices (docs/record-replay.md, "virtio"), set up before the guest runs.

- **Their guest memory is observed.** While recording, every virtio function's transport is handed the
  machine's ``dma_memory`` instead of its plain RAM, so ring reads and writes are DMA events; the data
  buffers virtio-blk reaches through live views are reported by ``Chain.note_*`` around the disk call.
  Without ``--record`` the transport keeps plain RAM: nothing is tested per access.
- **virtio-blk** (vmm/record_block.py): each disk call is a DISK event (a read's data are the DMA writes after
  it; replay's disk answers from them, no image), each wake of its IO thread a VIRTIO_WORK cause.
- **virtio-rng**: the host's random bytes are an ENTROPY input, handed back in replay.
- **virtio-console**: input arriving (CONSOLE_INPUT) and the output pump making room (CONSOLE_DRAINED) are
  causes of their own; the room the pump had when the device asked is an input (CONSOLE_ROOM).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..devices.virtio.block import VirtioBlock
from ..devices.virtio.block.worker import Worker, WorkerFactory
from ..devices.virtio.console import INPUT, ROOM, VirtioConsole
from ..devices.virtio.output_pump import OutputPump
from ..devices.virtio.pci import TransportKind
from ..devices.virtio.rng import VirtioRng
from ..errors import ConfigError
from . import recording as rec
from .config import MachineConfig
from .record_block import (
    CauseRunner,
    DiskFeed,
    DiskSink,
    ObservedDisk,
    ReplayDisk,
    ReplayWorker,
    recording_worker_factory,
)
from .virtio import DiskSpec, virtio_functions


class EntropySink(Protocol):
    def entropy(self, data: bytes) -> None: ...


class RoomSink(Protocol):
    def console_room(self, room: int) -> int: ...


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
    return {
        "transport": config.virtio_transport.value,
        "disks": disks,
        "rng": config.virtio_rng,
        "console": config.virtio_console is not None,
    }


def replay_virtio_config(config: MachineConfig, saved: Any) -> None:
    """Set ``config``'s disks from a header's "virtio" section; each is opened as a ``ReplayDisk``."""
    if saved is None:
        return  # before format 4: no virtio devices
    try:
        config.virtio_transport = TransportKind(saved["transport"])
        infos = [dict(d) for d in saved["disks"]]
        config.disks = [DiskSpec(str(d["path"]), bool(d["read_only"]), d["serial"]) for d in infos]
        disks = [ReplayDisk(d) for d in infos]
        config.virtio_rng = bool(saved.get("rng", False))
        config.virtio_console = _no_output if saved.get("console", False) else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the recording's header has a malformed virtio section ({exc!r})") from None
    opened = iter(disks)
    config.open_disk = lambda spec: next(opened)


def _no_output(data: bytes) -> None:
    return None


def virtio_rngs(host: Any) -> list[VirtioRng]:
    return [fn.device for fn in virtio_functions(host.pci) if isinstance(fn.device, VirtioRng)]


def recorded_source(source: Callable[[int], bytes], sink: EntropySink) -> Callable[[int], bytes]:
    def recorded(count: int) -> bytes:
        data = source(count)
        sink.entropy(data)
        return data

    return recorded


def virtio_consoles(host: Any) -> list[VirtioConsole]:
    return [fn.device for fn in virtio_functions(host.pci) if isinstance(fn.device, VirtioConsole)]


class RecordingPump(OutputPump):
    """A console's output pump whose ``room()`` answers are recorded (replay's ``ReplayPump`` gives them back)."""

    def __init__(self, pump: OutputPump, sink: RoomSink) -> None:
        super().__init__(pump.sink, pump.limit, pump.on_room, pump.name)
        self.recorded = sink

    def room(self) -> int:
        return self.recorded.console_room(super().room())


class ReplayPump(OutputPump):
    """A pump with no thread and no sink: ``room()`` is what the recording says, output goes nowhere (the
    bytes the device took are compared as its DMA reads)."""

    def __init__(self, pump: OutputPump, sink: RoomSink) -> None:
        super().__init__(pump.sink, pump.limit, pump.on_room, pump.name)
        self.rooms: deque[int] = deque()
        self.recorded = sink

    def room(self) -> int:
        return self.recorded.console_room(self.rooms.popleft() if self.rooms else 0)

    def put(self, data: bytes) -> None:
        self.delivered += len(data)


def _recorded_host_events(recorder: CauseRunner) -> Callable[[str, bytes, Callable[[], None]], None]:
    def as_cause(event: str, data: bytes, work: Callable[[], None]) -> None:
        kind = rec.CONSOLE_INPUT if event == INPUT else rec.CONSOLE_DRAINED
        recorder.background_cause(kind, 0, work, _never, data)

    return as_cause


def _never() -> bool:
    return False


def record_virtio(host: Any, recorder: Any) -> None:
    """Make ``host``'s virtio devices recordable (before the guest runs: no queue is active, no output yet)."""
    for fn in virtio_functions(host.pci):
        fn.transport.memory = host.dma_memory
    for index, block in enumerate(virtio_blocks(host)):
        block.disk = ObservedDisk(block.disk, index, recorder)
        block.worker_factory = recording_worker_factory(recorder, index)
    for rng in virtio_rngs(host):
        rng.source = recorded_source(rng.source, recorder)
    for console in virtio_consoles(host):
        console.pump = RecordingPump(console.pump, recorder)
        console.host_event = _recorded_host_events(recorder)


class ReplaySink(DiskSink, EntropySink, RoomSink, Protocol):
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
        self.consoles = virtio_consoles(host)
        self.pumps = []
        for console in self.consoles:
            console.pump.close()  # never started: no output was put
            console.pump = pump = ReplayPump(console.pump, sink)
            self.pumps.append(pump)
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
        for pump in self.pumps:
            pump.rooms = deque(event.value for event in effects if event.kind == rec.CONSOLE_ROOM)

    def _random(self, count: int) -> bytes:
        """What the recording's rng got; a model asking for another count gets zeros (and diverges)."""
        data = self.entropy.popleft() if self.entropy else b""
        if len(data) != count:
            data = bytes(count)
        self._sink.entropy(data)
        return data

    def console_event(self, kind: int, data: bytes) -> bool:
        """Input arriving or the pump making room, where the recording says; False without a console."""
        if not self.consoles:
            return False
        console = self.consoles[0]
        if kind == rec.CONSOLE_INPUT:
            console.feed(data)
        else:
            console.host_event(ROOM, b"", console.resume_transmit)
        return True

    def work(self, index: int) -> bool:
        """Run device ``index``'s IO work; False if it has no live IO thread now."""
        worker = self.workers.get(index)
        if worker is None or worker.stopping:
            return False
        worker.work()
        return True
