"""Interrupts: the GSI routing table, interrupt lines, the line allocator, irqfd and MSI.

**Routing** (pushed once with KVM_SET_GSI_ROUTING; kvmtool's canonical table, spec §4.2):

- GSI 0, 1, 3-7   → PIC master pins 0, 1, 3-7 (GSI 2 is the cascade: no PIC entry)
- GSI 8-15        → PIC slave pins 0-7
- GSI 0-23        → IOAPIC pins 0-23, except GSI 0 → pin 2 (the ISA timer override every PC has)
- GSI 24 and up   → MSI routes, added on demand (``MsiRoutes``), for irqfd-driven MSI

**Line numbers** (``IrqAllocator``; one allocator for every device, ISA and PCI):

- fixed, never handed out: 0 PIT, 1 keyboard, 2 cascade, 3 COM2, 4 COM1, 8 RTC, 12 mouse,
  13 FPU, 14/15 IDE — whether or not the device exists, so guests see PC numbering;
- ``alloc("isa")``: a line that also reaches the PIC: 5, 6, 7, 9, 10, 11 in that order;
- ``alloc("ioapic")``: IOAPIC-only lines 16-23 (PCI INTx), then the ISA pool when those run out.
The seed's first values differ (Broiler hands out 3 and 5 for ISA demos, 8 for PCI) because its
allocators ignore the fixed lines; ours never collide with them.

**The one interrupt type.** Every device -- legacy, demo, test device, PCI INTx -- holds an
``IrqLine`` (the protocol below: ``gsi``, ``set_level(bool)``, ``pulse()``) handed to it by
``broiler/vmm/platform.py``; it never sees a GSI number it must turn into an ioctl itself. Level
devices call ``set_level``, edge devices ``pulse``. ``KvmIrqLine`` (KVM_IRQ_LINE) and ``IrqFd``
(KVM_IRQFD) implement it; unit tests use ``tests/unit/fakes.py::FakeIrqLine``. MSI and MSI-X
messages are ``MsiMessage(address, data)``, delivered through an ``MsiSink`` callable. All of these
may be called from any thread; after the VM has stopped they are documented no-ops (a late timer
must not crash the VMM).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..errors import ConfigError
from ..kvm import Vm, abi
from .observe import LINE_IRQFD, LINE_LOWERED, LINE_PULSED, LINE_RAISED, MSI_DIRECT

log = logging.getLogger("broiler.core.irq")

IOAPIC_PINS = 24
FIRST_MSI_GSI = 24
MAX_GSI = 1024
FIXED_LINES = {
    0: "timer",
    1: "keyboard",
    2: "cascade",
    3: "ttyS1",
    4: "ttyS0",
    8: "rtc",
    12: "mouse",
    13: "fpu",
    14: "ide0",
    15: "ide1",
}
ISA_POOL = (5, 6, 7, 9, 10, 11)
IOAPIC_POOL = tuple(range(16, IOAPIC_PINS))


def default_routing() -> list[abi.kvm_irq_routing_entry]:
    entries = []

    def chip(gsi: int, irqchip: int, pin: int) -> None:
        e = abi.kvm_irq_routing_entry(gsi=gsi, type=abi.KVM_IRQ_ROUTING_IRQCHIP)
        e.u.irqchip.irqchip = irqchip
        e.u.irqchip.pin = pin
        entries.append(e)

    for gsi in range(16):
        if gsi != 2:
            chip(gsi, abi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else abi.KVM_IRQCHIP_PIC_SLAVE, gsi % 8)
    for gsi in range(IOAPIC_PINS):
        if gsi != 2:
            chip(gsi, abi.KVM_IRQCHIP_IOAPIC, 2 if gsi == 0 else gsi)
    return entries


def msi_entry(gsi: int, address: int, data: int) -> abi.kvm_irq_routing_entry:
    e = abi.kvm_irq_routing_entry(gsi=gsi, type=abi.KVM_IRQ_ROUTING_MSI)
    e.u.msi.address_lo = address & 0xFFFFFFFF
    e.u.msi.address_hi = address >> 32
    e.u.msi.data = data
    return e


@runtime_checkable
class IrqLine(Protocol):
    """One interrupt line (a GSI), as a device sees it."""

    @property
    def gsi(self) -> int: ...

    def set_level(self, level: bool) -> None:
        """Drive a level-triggered line; implementations act only on a change."""
        ...

    def pulse(self) -> None:
        """One edge: high, then low."""
        ...


class MsiMessage(NamedTuple):
    """One MSI/MSI-X message: a dword ``data`` written to ``address`` (0xFEExxxxx reaches a LAPIC)."""

    address: int
    data: int


MsiSink = Callable[[MsiMessage], None]
"""``sink(message)``: deliver one MSI/MSI-X message (KVM_SIGNAL_MSI, a route or an irqfd)."""


class IrqAllocator:
    def __init__(self) -> None:
        self.owners: dict[int, str] = dict(FIXED_LINES)
        self._lock = threading.Lock()

    def reserve(self, gsi: int, owner: str) -> int:
        with self._lock:
            if not 0 <= gsi < IOAPIC_PINS:
                raise ConfigError(f"IRQ {gsi} is out of range (0-{IOAPIC_PINS - 1})")
            if gsi in self.owners and self.owners[gsi] != owner:
                raise ConfigError(f"IRQ {gsi} for {owner} is already used by {self.owners[gsi]}")
            self.owners[gsi] = owner
            return gsi

    def alloc(self, owner: str, kind: str = "isa") -> int:
        pools = {"isa": ISA_POOL, "ioapic": IOAPIC_POOL + ISA_POOL}
        if kind not in pools:
            raise ConfigError(f"unknown IRQ kind {kind!r}")
        with self._lock:
            for gsi in pools[kind]:
                if gsi not in self.owners:
                    self.owners[gsi] = owner
                    return gsi
        raise ConfigError(f"no free {kind} interrupt line left for {owner}")

    def release(self, gsi: int) -> None:
        with self._lock:
            if gsi not in FIXED_LINES:
                self.owners.pop(gsi, None)


class KvmIrqLine:
    """One GSI driven through KVM_IRQ_LINE: ``set_level`` for level-triggered devices, ``pulse`` for edges."""

    def __init__(self, vm: Vm, gsi: int, is_stopped: Callable[[], bool]) -> None:
        if not 0 <= gsi < MAX_GSI:
            raise ConfigError(f"IRQ {gsi} is out of range")
        self.vm = vm
        self.gsi = gsi
        self._is_stopped = is_stopped
        self.level = 0
        self.raised = 0  # how many times the line went (or was pulsed) high
        self.observer: Any = None

    def set_level(self, level: bool) -> None:
        self._drive(1 if level else 0)

    def _drive(self, level: int) -> None:
        if self._is_stopped():
            return
        if level and not self.level:
            self.raised += 1
        if self.observer is not None and level != self.level:
            self.observer.emit("irq", "w", self.gsi, 0, level, LINE_RAISED if level else LINE_LOWERED)
        self.level = level
        self.vm.irq_line(self.gsi, level)

    def pulse(self) -> None:
        if self._is_stopped():
            return
        self.raised += 1
        if self.observer is not None:
            self.observer.emit("irq", "w", self.gsi, 0, 1, LINE_PULSED)
        self.vm.irq_line(self.gsi, 1)
        self.vm.irq_line(self.gsi, 0)
        self.level = 0


class IrqFd:
    """An eventfd bound to a GSI with KVM_IRQFD: one eventfd write injects an edge (the kernel raises
    and lowers the GSI) with no ioctl from us. It is an ``IrqLine`` for edge devices: ``pulse`` (and
    ``set_level(True)``) inject an edge; lowering is a no-op. With ``resample`` the GSI stays asserted
    until the guest's EOI, which KVM reports on ``resample_fd`` (level semantics for devices that
    re-check their state then)."""

    def __init__(
        self, vm: Vm, gsi: int, *, resample: bool = False, is_stopped: Callable[[], bool] = lambda: False
    ) -> None:
        self.vm = vm
        self.gsi = gsi
        self._is_stopped = is_stopped
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.resample_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if resample else None
        vm.irqfd(self.fd, gsi, resample_fd=self.resample_fd)
        self.triggered = 0
        self.level = 0
        self.observer: Any = None

    @property
    def raised(self) -> int:
        return self.triggered

    def trigger(self) -> None:
        if self._is_stopped() or self.fd < 0:
            return
        self.triggered += 1
        if self.observer is not None:
            self.observer.emit("irq", "w", self.gsi, 0, 1, LINE_IRQFD)
        os.eventfd_write(self.fd, 1)

    pulse = trigger

    def set_level(self, level: bool) -> None:
        if level:
            self.trigger()

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.vm.irqfd(self.fd, self.gsi, deassign=True)
        except Exception:
            pass  # the VM is already gone
        os.close(self.fd)
        if self.resample_fd is not None:
            os.close(self.resample_fd)
        self.fd = -1


class MsiRoutes:
    """The routing table plus MSI entries from GSI 24 up (for MSI through irqfd)."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self._base = default_routing()
        self._msi: dict[int, tuple[int, int]] = {}
        self._next = FIRST_MSI_GSI
        self._lock = threading.Lock()

    def push(self) -> None:
        entries = list(self._base) + [msi_entry(g, a, d) for g, (a, d) in sorted(self._msi.items())]
        self.vm.set_gsi_routing(entries)

    def add(self, address: int, data: int) -> int:
        with self._lock:
            gsi = self._next
            if gsi >= MAX_GSI:
                raise ConfigError("no GSI left for an MSI route")
            self._next += 1
            self._msi[gsi] = (address, data)
            self.push()
            return gsi

    def update(self, gsi: int, address: int, data: int) -> None:
        with self._lock:
            if self._msi.get(gsi) != (address, data):
                self._msi[gsi] = (address, data)
                self.push()


class Interrupts:
    """What the machine hands to devices: lines by GSI, the allocator, MSI delivery."""

    def __init__(self, vm: Vm, is_stopped: Callable[[], bool], *, routing: bool = True) -> None:
        self.vm = vm
        self.allocator = IrqAllocator()
        self.routes = MsiRoutes(vm)
        if routing:  # needs the in-kernel irqchip
            self.routes.push()
        self._is_stopped = is_stopped
        self.routing = routing
        self._lines: dict[int, KvmIrqLine] = {}
        self.msis_sent = 0
        self.msis_dropped = 0
        self.observer: Any = None
        self.irqfds: list[IrqFd] = []
        self._msi_sinks: list[IrqfdMsiSink] = []

    def line(self, gsi: int) -> KvmIrqLine:
        if gsi not in self._lines:
            self._lines[gsi] = KvmIrqLine(self.vm, gsi, self._is_stopped)
            self._lines[gsi].observer = self.observer
        return self._lines[gsi]

    def set_observer(self, observer: Any) -> None:
        self.observer = observer
        for line in self._lines.values():
            line.observer = observer
        for irqfd in self.irqfds:
            irqfd.observer = observer

    def alloc_line(self, owner: Hashable, kind: str = "isa") -> KvmIrqLine:
        return self.line(self.allocator.alloc(str(owner), kind))

    def alloc_edge_line(self, owner: Hashable, kind: str = "isa") -> KvmIrqLine | IrqFd:
        """A line for an edge-triggered device: an irqfd where KVM has them, else KVM_IRQ_LINE pulses."""
        gsi = self.allocator.alloc(str(owner), kind)
        if self.vm.check_extension(abi.KVM_CAP_IRQFD) <= 0:
            return self.line(gsi)
        irqfd = IrqFd(self.vm, gsi, is_stopped=self._is_stopped)
        irqfd.observer = self.observer
        self.irqfds.append(irqfd)
        return irqfd

    def close(self) -> None:
        for irqfd in self.irqfds:
            irqfd.close()
        self.irqfds.clear()
        for sink in self._msi_sinks:
            sink.close()
        self._msi_sinks.clear()

    def send_msi(self, message: MsiMessage) -> None:
        """``signal_msi`` for an ``MsiMessage``: what PCI devices get as their ``MsiSink``."""
        self.signal_msi(message.address, message.data)

    def msi_irqfd_sink(self, slots: int) -> MsiSink:
        """An ``MsiSink`` that injects through irqfds (no ioctl per interrupt), for a device with
        ``slots`` MSI/MSI-X vectors; ``send_msi`` (KVM_SIGNAL_MSI) where KVM has no irqfd or routing."""
        if not self.routing or self.vm.check_extension(abi.KVM_CAP_IRQFD) <= 0:
            return self.send_msi
        sink = IrqfdMsiSink(self, slots)
        self._msi_sinks.append(sink)
        return sink

    def lapic_message(self, address: int) -> bool:
        """Only writes to the LAPIC window 0xFEExxxxx are interrupts; any other address would be a DMA
        write to memory on real hardware, so it is dropped and counted (``msis_dropped``) rather than
        handed to KVM, which would turn it into an interrupt anyway."""
        if address >> 20 == 0xFEE:
            return True
        self.msis_dropped += 1
        if self.msis_dropped == 1:
            log.info("MSI to %#x (not the LAPIC window 0xFEExxxxx) dropped; further ones counted", address)
        return False

    def signal_msi(self, address: int, data: int) -> None:
        """Deliver an MSI. Only writes to the LAPIC window 0xFEExxxxx are interrupts; any other
        address would be a DMA write to memory on real hardware, so it is dropped and counted
        (``msis_dropped``) rather than handed to KVM, which would turn it into an interrupt anyway."""
        if self._is_stopped() or not self.lapic_message(address):
            return
        self.msis_sent += 1
        if self.observer is not None:
            self.observer.emit("irq", "w", address, 4, data, MSI_DIRECT)
        self.vm.signal_msi(address, data)


class IrqfdMsiSink:
    """MSI through irqfd: each distinct message gets an MSI route (a GSI from 24 up, KVM_SET_GSI_ROUTING)
    and an irqfd bound to it, so delivering it is one eventfd write from the device's thread. At most
    ``slots`` messages are kept (a device's vector count); a new one takes over the least recently used
    slot and rewrites its route, so a guest reprogramming its MSI-X table forever costs route updates,
    never memory or GSIs."""

    def __init__(self, interrupts: Interrupts, slots: int) -> None:
        self._irqs = interrupts
        self._slots = max(1, slots)
        self._lock = threading.Lock()
        self._by_message: dict[tuple[int, int], IrqFd] = {}  # insertion order = least recently used first

    def __call__(self, message: MsiMessage) -> None:
        irqs = self._irqs
        if irqs._is_stopped() or not irqs.lapic_message(message.address):
            return
        key = (message.address, message.data)
        with self._lock:  # held while triggering: a slot must not be re-pointed between lookup and write
            irqfd = self._by_message.pop(key, None)
            if irqfd is None:
                irqfd = self._slot_for(key)
            self._by_message[key] = irqfd
            irqs.msis_sent += 1
            if irqs.observer is not None:
                irqs.observer.emit("irq", "w", message.address, 4, message.data, f"MSI via irqfd (GSI {irqfd.gsi})")
            irqfd.trigger()

    def _slot_for(self, key: tuple[int, int]) -> IrqFd:
        if len(self._by_message) < self._slots:
            gsi = self._irqs.routes.add(*key)
            return IrqFd(self._irqs.vm, gsi, is_stopped=self._irqs._is_stopped)
        oldest = next(iter(self._by_message))
        irqfd = self._by_message.pop(oldest)
        self._irqs.routes.update(irqfd.gsi, *key)
        return irqfd

    def close(self) -> None:
        with self._lock:
            for irqfd in self._by_message.values():
                irqfd.close()
            self._by_message.clear()
