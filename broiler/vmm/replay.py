"""`broiler replay FILE`: re-drive a recording's causes into freshly built device models, without KVM, and
compare what the devices answer and do with what the recording says they did.

The platform is rebuilt from the header (a ``PlatformSketch``: the same ``add_platform_devices``, no VM).
Events come in groups: a cause (an access, a doorbell kick, a timer firing) and its effects (DMA, interrupt
changes, timers set). For each group: the DMA data the device read during the run is put back in guest RAM,
the cause is driven (bus read/write/coalesced write, the doorbell's callback, the timer's function), and
what the devices did is compared with the recorded effects. Timers never run by the clock: a recorded
"timer fired #n" runs the function that was scheduled where the recording says timer #n was set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.observe import LINE_IRQFD, LINE_PULSED, Observer, attach_observer
from ..errors import GuestMemoryError
from . import recording as rec
from .config import MachineConfig
from .platform import PlatformSketch
from .record_virtio import VirtioReplay, replay_virtio_config
from .userdev import parse_device_spec
from .wake_reset import WakeReset

_READS = {rec.PIO_READ: "pio", rec.MMIO_READ: "mmio"}
_WRITES = {rec.PIO_WRITE: "pio", rec.MMIO_WRITE: "mmio"}
_COALESCED = {rec.COALESCED_PIO: "pio", rec.COALESCED_MMIO: "mmio"}


@dataclass
class Divergence:
    number: int  # the event's index in the recording
    cause: str
    recorded: str
    now: str

    def describe(self) -> str:
        return f"event {self.number}: {self.cause}: recorded {self.recorded}, now {self.now}"


@dataclass
class ReplayResult:
    events: int = 0
    causes: int = 0
    divergences: int = 0
    first: list[Divergence] = field(default_factory=list)
    per_device: dict[str, list[int]] = field(default_factory=dict)  # name -> access times (µs), for --plot


class _Effects(Observer):
    """What the rebuilt devices do while a cause is driven: recorded like the Recorder files them."""

    def __init__(self, memory: Any) -> None:
        self.memory = memory  # the sketch's guest RAM, where recorded DMA reads are put back
        self.read_feed: deque[rec.Event] = deque()  # the recorded DMA reads of the cause being driven, in order
        self.produced: list[rec.Event] = []
        self.scheduled: list[Callable[[], None]] = []
        self.clock_feed: list[int] = []  # the clock values recorded for the cause being driven, in order
        self._last_clock = [0, 0]  # per source: what an unrecorded extra read gets (time does not go back)

    def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
        if kind != "irq":
            return
        if size == 4:
            self.produced.append(rec.Event(rec.MSI, 0, addr, 4, value or 0))
        else:
            pulse = device in (LINE_PULSED, LINE_IRQFD)
            self.produced.append(rec.Event(rec.IRQ_PULSE if pulse else rec.IRQ_LEVEL, 0, addr, 0, value or 0))

    def dma(self, rw: str, gpa: int, data: bytes) -> None:
        self.produced.append(rec.Event(rec.DMA_READ if rw == "r" else rec.DMA_WRITE, 0, gpa, len(data), 0, data))

    def dma_before_read(self, gpa: int, size: int) -> None:
        """Put back what this read found during the run (a ring index read twice in a cause may have changed)."""
        feed = self.read_feed
        if feed and feed[0].addr == gpa and feed[0].size == size:
            try:
                self.memory.write(gpa, feed.popleft().data)
            except GuestMemoryError:
                pass

    def disk(self, offset: int, length: int, value: int) -> None:
        self.produced.append(rec.Event(rec.DISK, 0, offset, length, value))

    def entropy(self, data: bytes) -> None:
        self.produced.append(rec.Event(rec.ENTROPY, 0, 0, len(data), 0, data))

    def console_room(self, room: int) -> int:
        self.produced.append(rec.Event(rec.CONSOLE_ROOM, 0, 0, 0, room))
        return room

    def clock(self, source: int, value: int) -> int:
        if self.clock_feed:
            value = self.clock_feed.pop(0)
        elif 0 <= source < len(self._last_clock):
            value = self._last_clock[source]
        if 0 <= source < len(self._last_clock):
            self._last_clock[source] = value
        self.produced.append(rec.Event(rec.CLOCK, 0, source, 0, value))
        return value

    def sleep(self) -> None:
        self.produced.append(rec.Event(rec.S3_SLEEP, 0, 0, 0, 0))

    def timer(self, fn: Callable[[], None]) -> Callable[[], None]:
        self.scheduled.append(fn)
        self.produced.append(rec.Event(rec.TIMER_SET, 0, 0, 0, len(self.scheduled) - 1))
        return fn  # the sketch's event loop never runs: replay calls ``fn`` when the recording says it fired


def replay_config(header: dict[str, Any], devices: list[str] | None) -> MachineConfig:
    saved = header["config"]
    config = MachineConfig(
        mem_size=int(saved["mem_size"]),
        cpus=int(saved["cpus"]),
        demo_devices=bool(saved["demo_devices"]),
        testdev=bool(saved["testdev"]),
        irqchip=bool(saved["irqchip"]),
        async_delay=float(saved["async_delay"]),
        hpet=saved.get("hpet"),  # absent before format 2: the platform's default, an HPET
        serial_output=lambda data: None,
    )
    texts = list(saved.get("devices", [])) if devices is None else devices
    config.devices = [parse_device_spec(text) for text in texts]
    replay_virtio_config(config, header.get("virtio"))  # disks answered from the recording, no image
    return config


def _groups(events: Iterable[rec.Event]) -> Iterator[tuple[int, rec.Event, list[rec.Event]]]:
    """(index of the cause, cause, its effects); effects before any cause are filed under a dummy."""
    number, cause = 0, rec.Event(0, 0, 0, 0, 0)
    effects: list[rec.Event] = []
    for i, event in enumerate(events):
        if event.kind in rec.CAUSES:
            if cause.kind or effects:
                yield number, cause, effects
            number, cause, effects = i, event, []
        else:
            effects.append(event)
    if cause.kind or effects:
        yield number, cause, effects


class Replayer:
    def __init__(self, config: MachineConfig, *, show: int = 10) -> None:
        self.platform = PlatformSketch(config)
        self.effects = _Effects(self.platform.memory)
        attach_observer(self.platform, self.effects)
        self.virtio = VirtioReplay(self.platform, self.effects)
        self.timers: dict[int, Callable[[], None]] = {}
        # Made before any event, as the machine makes its own before the guest runs: the HPET's state at creation.
        self.wake_reset = WakeReset(self.platform.acpi_pm, self.platform.rtc, self.platform.devices)
        self.result = ReplayResult()
        self.show = show

    def run(self, events: Iterable[rec.Event]) -> ReplayResult:
        counted = _counting(events, self.result)
        for number, cause, effects in _groups(counted):
            self._group(number, cause, effects)
        self.platform.close()
        return self.result

    def _diverged(self, number: int, cause: rec.Event, recorded: str, now: str) -> None:
        self.result.divergences += 1
        if len(self.result.first) < self.show:
            self.result.first.append(Divergence(number, cause.describe(), recorded, now))

    def _group(self, number: int, cause: rec.Event, effects: list[rec.Event]) -> None:
        for event in effects:
            if event.kind == rec.DMA_READ:  # what the guest had put there: the device must read it again
                try:
                    self.platform.memory.write(event.addr, event.data)
                except GuestMemoryError:
                    pass
        self.effects.produced.clear()
        self.effects.scheduled.clear()
        self.effects.clock_feed = [event.value for event in effects if event.kind == rec.CLOCK]
        self.effects.read_feed = deque(event for event in effects if event.kind == rec.DMA_READ)
        self.virtio.load(effects)
        if cause.kind:
            self.result.causes += 1
            try:
                self._drive(number, cause)
            except Exception as exc:  # a changed device model may raise: that is a divergence, not a crash
                self._diverged(number, cause, "no exception", f"{type(exc).__name__}: {exc}")
        self._compare(number, cause, effects)

    def _drive(self, number: int, cause: rec.Event) -> None:
        kind, addr, size, value = cause.kind, cause.addr, cause.size, cause.value
        platform = self.platform
        if kind in _READS:
            bus = platform.pio_bus if _READS[kind] == "pio" else platform.mmio_bus
            self._note(bus, addr, cause.t_us)
            now = bus.read(addr, size)
            if now != value:
                self._diverged(number, cause, f"{value:#x}", f"{now:#x}")
        elif kind in _WRITES:
            bus = platform.pio_bus if _WRITES[kind] == "pio" else platform.mmio_bus
            self._note(bus, addr, cause.t_us)
            bus.write(addr, size, value)
        elif kind in _COALESCED:
            bus = platform.pio_bus if _COALESCED[kind] == "pio" else platform.mmio_bus
            self._note(bus, addr, cause.t_us)
            bus.replay(addr, size, value)
        elif kind in (rec.KICK_PIO, rec.KICK_MMIO):
            self._kick(number, cause)
        elif kind == rec.S3_WAKE:
            self.wake_reset.apply(by_rtc=bool(value))
        elif kind in (rec.CONSOLE_INPUT, rec.CONSOLE_DRAINED):
            if not self.virtio.console_event(kind, cause.data):
                self._diverged(number, cause, "a virtio-console", "none")
        elif kind == rec.VIRTIO_WORK:
            if not self.virtio.work(value):
                self._diverged(number, cause, "the IO thread's work", "no active virtio-blk queue there")
        elif kind == rec.TIMER_FIRED:
            fn = self.timers.pop(value, None)
            if fn is None:
                self._diverged(number, cause, "a timer set earlier", "no such timer was set")
            else:
                fn()

    def _kick(self, number: int, cause: rec.Event) -> None:
        pio = cause.kind == rec.KICK_PIO
        for bell in self.platform.doorbells.active:
            if bell.pio == pio and bell.addr == cause.addr and bell.length == cause.size:
                bell.callback(cause.value)
                return
        self._diverged(number, cause, "a doorbell there", "none")

    def _note(self, bus: Any, addr: int, t_us: int) -> None:
        region = bus.find(addr)
        name = f"{bus.name} {region.name}" if region is not None else f"{bus.name} (unmapped)"
        times = self.result.per_device.setdefault(name, [])
        if len(times) < 1 << 20:  # enough points for a plot; bounded memory on a huge recording
            times.append(t_us)

    def _compare(self, number: int, cause: rec.Event, recorded: list[rec.Event]) -> None:
        produced = self.effects.produced
        for i in range(max(len(recorded), len(produced))):
            want = recorded[i] if i < len(recorded) else None
            got = produced[i] if i < len(produced) else None
            if want is not None and got is not None and want.kind == got.kind == rec.TIMER_SET:
                self.timers[want.value] = self.effects.scheduled[got.value]
                continue
            if want is not None and got is not None and _same(want, got):
                continue
            self._diverged(
                number,
                cause,
                "nothing more" if want is None else want.describe(),
                "nothing more" if got is None else got.describe(),
            )
            return  # the rest of this group is out of step: one divergence per cause


def _same(a: rec.Event, b: rec.Event) -> bool:
    return (a.kind, a.addr, a.size, a.value, a.data) == (b.kind, b.addr, b.size, b.value, b.data)


def _counting(events: Iterable[rec.Event], result: ReplayResult) -> Iterator[rec.Event]:
    for event in events:
        result.events += 1
        yield event
