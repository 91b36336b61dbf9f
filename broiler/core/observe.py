"""Watching what devices see and do: the one hook mechanism behind `--trace` and `--record`.

An ``Observer`` is told about every device-visible event: sync accesses (through ``ObservedDevice``, a
proxy a bus puts in front of each device), coalesced writes, doorbell kicks, interrupts (lines and MSIs),
DMA through ``DeviceMemory``, and deferred work (event-loop timers). ``begin``/``end`` bracket a *cause*
(an access, a kick, a timer firing) on the current thread, so a recorder can file the events a device
produces while handling it (DMA, interrupts, new timers) under that cause.

Observing costs nothing when off: nothing tests a flag on the exit path. ``observe_bus`` swaps each
region's device for a proxy (and sets ``Bus.wrap_device`` so devices registered or moved later get one
too); without an observer no proxy exists. The doorbell, interrupt, timer and DMA hooks test an attribute
for ``None``; none of them is on the per-exit path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bus import Bus, Device
from .memory import GuestMemory

# The ``device`` labels of "irq" events: what happened to the line (``addr`` is the GSI, ``value`` the level)
# or, for MSIs (size 4), how the message was sent (``addr`` is the address, ``value`` the data).
LINE_RAISED = "line raised"
LINE_LOWERED = "line lowered"
LINE_PULSED = "line pulsed"
LINE_IRQFD = "irqfd"
MSI_DIRECT = "MSI"
NOTE_PIECE = 1 << 20  # DMA through views is reported in pieces no larger than this (bounded events)


class Observer:
    """Every hook a no-op: subclass and override what you need (frontend/trace.py, vmm/recorder.py)."""

    def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
        """One event. ``kind``: pio, mmio, coalesced, doorbell (``value`` = kicks) or irq (labels above)."""

    def begin(self) -> None:
        """A cause starts on this thread; events until the matching ``end`` are its doing."""

    def end(self) -> None:
        """The cause begun last on this thread is over."""

    def dma(self, rw: str, gpa: int, data: bytes) -> None:
        """A device read (``rw`` "r") or wrote ("w") ``data`` at guest-physical ``gpa``."""

    def dma_before_read(self, gpa: int, size: int) -> None:
        """A device is about to read ``size`` bytes at ``gpa`` (replay puts the recorded bytes there)."""

    def timer(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Deferred work was scheduled; returns what the event loop should run instead of ``fn``."""
        return fn

    def clock(self, source: int, value: int) -> int:
        """A device read the clock (core/clock.py: ``source`` says which reading); returns what it gets."""
        return value

    def sleep(self) -> None:
        """A device asked the machine for an S3 sleep (while handling the access that asked)."""

    def wake(self, by_rtc: bool) -> None:
        """The machine woke from S3 (``by_rtc``: the RTC alarm, else a command): a cause, between ``begin`` and
        ``end``; the device resets of the wake (vmm/wake_reset.py) follow on this thread."""


class FanOut(Observer):
    """Several observers as one (``--trace`` with ``--record``), told in order."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = observers

    def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
        for observer in self.observers:
            observer.emit(kind, rw, addr, size, value, device)

    def begin(self) -> None:
        for observer in self.observers:
            observer.begin()

    def end(self) -> None:
        for observer in self.observers:
            observer.end()

    def dma(self, rw: str, gpa: int, data: bytes) -> None:
        for observer in self.observers:
            observer.dma(rw, gpa, data)

    def dma_before_read(self, gpa: int, size: int) -> None:
        for observer in self.observers:
            observer.dma_before_read(gpa, size)

    def timer(self, fn: Callable[[], None]) -> Callable[[], None]:
        for observer in self.observers:
            fn = observer.timer(fn)
        return fn

    def clock(self, source: int, value: int) -> int:
        for observer in self.observers:
            value = observer.clock(source, value)
        return value

    def sleep(self) -> None:
        for observer in self.observers:
            observer.sleep()

    def wake(self, by_rtc: bool) -> None:
        for observer in self.observers:
            observer.wake(by_rtc)


def attach_observer(host: Any, observer: Observer) -> Observer:
    """Hook ``observer`` into every path of ``host`` (a Machine or a platform sketch: pio_bus, mmio_bus,
    irqs, doorbells, loop, dma_memory, clock). A second observer joins the first; returns the one attached."""
    previous = getattr(host, "observer", None)
    if previous is not None:
        observer = FanOut([previous, observer])
    observe_bus(host.pio_bus, observer, "pio")
    observe_bus(host.mmio_bus, observer, "mmio")
    host.irqs.set_observer(observer)
    host.doorbells.observer = observer
    host.loop.observer = observer
    host.dma_memory.observer = observer
    host.clock.hook = observer.clock
    host.observer = observer
    return observer


class ObservedDevice(Device):
    """Forwards to the real device and tells the observer about each access."""

    def __init__(self, inner: Device, observer: Observer, kind: str, base: int, name: str) -> None:
        self.__dict__["inner"] = inner
        self.__dict__["_o"] = (observer, kind, base, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["inner"], name, value)

    def save_state(self) -> dict[str, Any]:
        return self.__dict__["inner"].save_state()  # type: ignore[no-any-return]

    def load_state(self, state: dict[str, Any]) -> None:
        self.__dict__["inner"].load_state(state)

    def read(self, offset: int, size: int) -> int:
        observer, kind, base, name = self.__dict__["_o"]
        observer.begin()
        try:
            value = self.inner.read(offset, size)
            observer.emit(kind, "r", base + offset, size, value, name)
        finally:
            observer.end()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self._write("w", offset, size, value)

    def coalesced_write(self, offset: int, size: int, value: int) -> None:
        self._write("c", offset, size, value)

    def _write(self, how: str, offset: int, size: int, value: int) -> None:
        observer, kind, base, name = self.__dict__["_o"]
        observer.begin()
        try:
            if how == "c":
                observer.emit("coalesced", kind[0], base + offset, size, value, name)
                self.inner.coalesced_write(offset, size, value)
            else:
                observer.emit(kind, "w", base + offset, size, value, name)
                self.inner.write(offset, size, value)
        finally:
            observer.end()


class _ObservedUnmapped:
    """What an unmapped address resolves to while observed: the bus's rule, and the event."""

    def __init__(self, bus: Bus, inner: Any, observer: Observer, kind: str) -> None:
        self.inner, self.observer, self.kind = inner, observer, kind

    def read(self, addr: int, size: int) -> int:
        value: int = self.inner.read(addr, size)
        self.observer.emit(self.kind, "r", addr, size, value, "(unmapped)")
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        self.observer.emit(self.kind, "w", addr, size, value, "(unmapped)")
        self.inner.write(addr, size, value)

    def replay(self, addr: int, size: int, value: int) -> None:
        self.observer.emit("coalesced", self.kind[0], addr, size, value, "(unmapped)")
        self.inner.replay(addr, size, value)


def observe_bus(bus: Bus, observer: Observer, kind: str) -> None:
    """Put every device of ``bus`` (and every one registered or moved later) behind an ``ObservedDevice``."""
    for region in bus.regions():
        region.inner = region.inner or region.device
        region.device = ObservedDevice(region.inner, observer, kind, region.base, region.name)
    unmapped = bus._unmapped
    if isinstance(unmapped, _ObservedUnmapped):  # observed already: the new observer replaces the old
        unmapped = unmapped.inner
    bus._unmapped = _ObservedUnmapped(bus, unmapped, observer, kind)
    bus.forget()
    bus.wrap_device = lambda device, base, name: ObservedDevice(device, observer, kind, base, name)


class DeviceMemory(GuestMemory):
    """Guest RAM as devices see it (DMA): the machine's ``GuestMemory`` with an observer hook.

    The same mappings as the machine's memory (loaders and the vCPUs' emulator use that one, so they are
    never mistaken for DMA). ``view`` hands out live memory: what a device does through a view is observed
    only where it says so with ``note`` (virtio-blk's data buffers)."""

    def __init__(self, memory: GuestMemory) -> None:  # not super().__init__: that would map new RAM
        self.memory = memory
        self.map = memory.map
        self.regions = memory.regions
        self.observer: Observer | None = None

    def _locate(self, gpa: int, size: int) -> tuple[Any, int]:
        return self.memory._locate(gpa, size)

    def read(self, gpa: int, size: int) -> bytes:
        observer = self.observer
        if observer is None:
            return self.memory.read(gpa, size)
        observer.dma_before_read(gpa, size)
        data = self.memory.read(gpa, size)
        observer.dma("r", gpa, data)
        return data

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.memory.write(gpa, data)
        if self.observer is not None:
            self.observer.dma("w", gpa, bytes(data))

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        self.memory.fill(gpa, size, byte)
        if self.observer is not None:
            self.observer.dma("w", gpa, bytes([byte]) * size)

    def view(self, gpa: int, size: int) -> memoryview:
        return self.memory.view(gpa, size)

    def note(self, rw: str, gpa: int, size: int) -> None:
        """A device moved bytes through a view: report them as DMA, in pieces of at most ``NOTE_PIECE``
        (a read is noted before the device reads, so replay can put the recorded bytes back first)."""
        observer = self.observer
        if observer is None:
            return
        for start in range(gpa, gpa + size, NOTE_PIECE):
            piece = min(NOTE_PIECE, gpa + size - start)
            if rw == "r":
                observer.dma_before_read(start, piece)
            observer.dma(rw, start, self.memory.read(start, piece))
