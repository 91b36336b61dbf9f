"""In-memory stand-ins for what the machine hands the PCI models: IRQ line, MSI sink, doorbells, timers.

``FakeDoorbells.guest_write`` plays KVM: a write that matches a registered doorbell exactly (address,
length, datamatch) rings it instead of reaching the bus; anything else goes to the bus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broiler.core.bus import Bus, MmioBus, PioBus
from broiler.core.memory import PCI_ECAM_BASE
from broiler.pci import PciHost


@dataclass
class FakeIrqLine:
    gsi: int = 10
    level: int = 0
    history: list[int] = field(default_factory=list)
    pulses: int = 0

    def set_level(self, level: int) -> None:
        self.level = level
        self.history.append(level)

    def pulse(self) -> None:
        self.pulses += 1

    @property
    def raises(self) -> int:
        return self.history.count(1)


@dataclass
class FakeMsiSink:
    messages: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, address: int, data: int) -> None:
        self.messages.append((address, data))


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


class FakeScheduler:
    """Records ``schedule(delay, fn)`` calls; ``run()`` fires them in order."""

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


# -- a host on real buses, and a guest's view of configuration space -----------------------------
def conf1_address(dev: int, reg: int, *, bus: int = 0, fn: int = 0, enable: bool = True) -> int:
    return (0x8000_0000 if enable else 0) | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC)


class Rig:
    """PioBus + MmioBus + FakeDoorbells + PciHost, with config accessors through CF8/CFC or ECAM."""

    def __init__(self, *, doorbells: bool = True) -> None:
        self.pio = PioBus()
        self.mmio = MmioBus()
        self.doorbells = FakeDoorbells() if doorbells else None
        self.host = PciHost(self.pio, self.mmio, doorbells=self.doorbells)

    def cfg_read(self, dev: int, reg: int, size: int = 4, *, ecam: bool = False, bus: int = 0, fn: int = 0) -> int:
        if ecam:
            return self.mmio.read(PCI_ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg), size)
        self.pio.write(0xCF8, 4, conf1_address(dev, reg, bus=bus, fn=fn))
        return self.pio.read(0xCFC + (reg & 3), size)

    def cfg_write(
        self, dev: int, reg: int, size: int, value: int, *, ecam: bool = False, bus: int = 0, fn: int = 0
    ) -> None:
        if ecam:
            self.mmio.write(PCI_ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg), size, value)
            return
        self.pio.write(0xCF8, 4, conf1_address(dev, reg, bus=bus, fn=fn))
        self.pio.write(0xCFC + (reg & 3), size, value)

    def bus_for(self, pio: bool) -> Bus:
        return self.pio if pio else self.mmio

    def guest_write(self, pio: bool, addr: int, size: int, value: int) -> bool:
        """A write as KVM routes it (doorbells first, if any)."""
        bus = self.bus_for(pio)
        if self.doorbells is None:
            bus.write(addr, size, value)
            return False
        return self.doorbells.guest_write(bus, addr, size, value)
