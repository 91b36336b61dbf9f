"""The one set of in-memory stand-ins for what the machine hands devices: interrupt lines, the MSI
sink, timers and doorbells. Every unit test builds devices with these (never with KVM).

``FakeDoorbells.guest_write`` plays KVM: a write that matches a registered doorbell exactly (address,
length, datamatch) rings it instead of reaching the bus; anything else goes to the bus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broiler.core.bus import Bus
from broiler.core.irq import MsiMessage


@dataclass
class FakeIrqLine:
    """An ``IrqLine`` that records: ``history`` of levels set, ``pulses``, and (when given a shared
    ``journal``) ``(gsi, level)`` in the order several lines were driven."""

    gsi: int = 10
    level: int = 0
    history: list[int] = field(default_factory=list)
    pulses: int = 0
    journal: list[tuple[int, int]] | None = None

    def set_level(self, level: bool) -> None:
        self.level = int(level)
        self.history.append(self.level)
        if self.journal is not None:
            self.journal.append((self.gsi, self.level))

    def pulse(self) -> None:
        self.pulses += 1

    @property
    def raises(self) -> int:
        """How many times the line was set high."""
        return self.history.count(1)


def fake_lines(count: int, journal: list[tuple[int, int]]) -> list[FakeIrqLine]:
    """Lines 0..count-1 that all record into ``journal``."""
    return [FakeIrqLine(gsi=n, journal=journal) for n in range(count)]


@dataclass
class FakeMsiSink:
    messages: list[MsiMessage] = field(default_factory=list)

    def __call__(self, message: MsiMessage) -> None:
        assert isinstance(message, MsiMessage)
        self.messages.append(message)


class FakeScheduler:
    """A ``Schedule`` that records ``schedule(delay, fn)`` calls; ``run()`` fires them in order
    (including ones scheduled while running). ``immediate=True`` fires each one at once."""

    def __init__(self, immediate: bool = False) -> None:
        self.immediate = immediate
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.delays: list[float] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> object:
        self.delays.append(delay)
        if self.immediate:
            fn()
        else:
            self.pending.append((delay, fn))
        return len(self.delays)

    def run(self) -> int:
        done = 0
        while self.pending:
            _, fn = self.pending.pop(0)
            fn()
            done += 1
        return done


@dataclass(eq=False)
class FakeHandle:
    pio: bool
    addr: int
    length: int
    datamatch: int | None
    callback: Callable[[int], None]
    owner: object
    kicks: int = 0


class FakeDoorbells:
    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []
        self.added = 0
        self.removed = 0

    def add(
        self,
        *,
        pio: bool,
        addr: int,
        length: int,
        datamatch: int | None,
        callback: Callable[[int], None],
        owner: object,
    ) -> object:
        handle = FakeHandle(pio, addr, length, datamatch, callback, owner)
        self.handles.append(handle)
        self.added += 1
        return handle

    def remove(self, handle: object) -> None:
        assert isinstance(handle, FakeHandle) and handle in self.handles, "removing an unknown handle"
        self.handles.remove(handle)
        self.removed += 1

    def at(self, pio: bool, addr: int) -> list[FakeHandle]:
        return [h for h in self.handles if h.pio == pio and h.addr == addr]

    def guest_write(self, bus: Bus, addr: int, size: int, value: int) -> bool:
        """A guest write as KVM routes it; True if a doorbell swallowed it."""
        pio = bus.name == "pio"
        for h in self.handles:
            if h.pio == pio and h.addr == addr and h.length == size and (h.datamatch is None or h.datamatch == value):
                h.kicks += 1
                h.callback(1)
                return True
        bus.write(addr, size, value)
        return False
