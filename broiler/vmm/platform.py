"""The platform: which devices every VM gets, in which order, at which addresses.

``add_platform_devices`` is the single list of devices (kvmtool's ordered init levels, spec §8; an
explicit order, never import order). It works on anything that offers the small registration API of
``Machine`` — ``PlatformSketch`` implements the same API without KVM, for `broiler layout`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Protocol

from .. import exitcodes
from ..core.bus import Device, MmioBus, PioBus, Region
from ..core.clock import DeviceClock
from ..core.eventloop import EventLoop
from ..core.ioeventfd import Doorbells
from ..core.irq import IrqAllocator, IrqLine, MsiMessage, MsiSink
from ..core.memory import GuestMemory, MemoryMap
from ..core.observe import LINE_IRQFD, LINE_LOWERED, LINE_PULSED, LINE_RAISED, MSI_DIRECT, DeviceMemory, Observer
from ..devices.demo.async_demo import ASYNC_DEVICES, AsyncDemo
from ..devices.demo.async_demo import BLOCK_SIZE as ASYNC_BLOCK_SIZE
from ..devices.demo.coalesced_log import LOG_BASE, LOG_SIZE, CoalescedLog
from ..devices.demo.pci_demos import (
    AsyncMmioPci,
    AsyncPioPci,
    IntxDemoPci,
    MsiDemoPci,
    MsixDemoPci,
    PciBaseDemo,
    SyncMmioPci,
    SyncPioPci,
)
from ..devices.demo.pci_dma import DmaBufPci, DmaIntxPci, DmaMsiPci, DmaMsixPci
from ..devices.demo.sync_demo import SYNC_BLOCK_SIZE, SYNC_MMIO_BASE, SYNC_PIO_BASE, SyncRegisters
from ..devices.legacy.acpi_pm import PM1A_EVT, PM_BLOCK_SIZE, AcpiPm
from ..devices.legacy.bochs_shutdown import SHUTDOWN_PORT, BochsShutdown
from ..devices.legacy.cmos import CMOS_INDEX, CMOS_SIZE, Cmos
from ..devices.legacy.debug_exit import DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit
from ..devices.legacy.hpet import HPET_BASE, HPET_SIZE, INT_ROUTE_CAP, LEGACY_ROUTES, Hpet
from ..devices.legacy.i8042 import AUX_IRQ, I8042, I8042_COMMAND, I8042_DATA, KBD_IRQ
from ..devices.legacy.pm_timer import PM_TIMER_PORT, PM_TIMER_SIZE, PmTimer
from ..devices.legacy.ports import register_legacy_ports
from ..devices.legacy.serial import COM1_BASE, COM1_IRQ, UART_SIZE, Serial8250
from ..devices.testdev.fw_cfg import FW_CFG_PORT, FW_CFG_PORT_SIZE, FwCfg
from ..devices.testdev.pc_testdev import IRQ_LINES, PcTestdev
from ..devices.testdev.pci_testdev import PciTestDev
from ..pci import PciFunction, PciHost
from .config import MachineConfig
from .userdev import DeviceContext, add_device_spec
from .virtio import add_virtio_devices


class PlatformInterrupts(Protocol):
    """What the platform wiring needs of ``Machine.irqs`` (core/irq.Interrupts) or the sketch's stand-in."""

    def line(self, gsi: int) -> IrqLine: ...

    def alloc_line(self, owner: str, kind: str = "isa") -> IrqLine: ...

    def alloc_edge_line(self, owner: str, kind: str = "isa") -> IrqLine: ...

    def send_msi(self, message: MsiMessage) -> None: ...

    def msi_irqfd_sink(self, slots: int) -> MsiSink: ...


class PlatformHost(Protocol):
    """What ``add_platform_devices`` needs: a ``Machine`` (vmm/machine.py) or a ``PlatformSketch`` (below).
    A protocol, so this module never imports the machine that imports it."""

    pio_bus: PioBus
    mmio_bus: MmioBus
    doorbells: Doorbells
    memory: GuestMemory
    dma_memory: DeviceMemory  # the same RAM as ``memory``, as devices see it (observable DMA)
    loop: EventLoop
    clock: DeviceClock  # the time devices read (recorded and replayed as an input)
    serial: Serial8250 | None
    pci: PciHost | None
    on_stop: list[Callable[[], None]]
    device_faults: list[str]  # reports of users' devices that misbehaved (vmm/userdev.py)
    user_contexts: list[DeviceContext]  # users' devices' contexts (vmm/userdev.py)
    rtc: Cmos | None  # the CMOS RTC and the PM1 block, for S3 (vmm/sleep.py)
    acpi_pm: AcpiPm | None
    observer: Observer | None  # --trace/--record (core/observe.py): told of an S3 request

    @property
    def irqs(self) -> PlatformInterrupts: ...

    def add_pio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region: ...

    def add_mmio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region: ...

    def request_exit(self, status: int, reason: str) -> None: ...

    def debug_exit(self, status: int) -> None: ...

    def request_suspend(self) -> None: ...


def stdout_writer(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


# Port devices no Linux driver claims. Linux boots declare them in the DSDT as motherboard resources
# (broiler/boot/acpi.py), so the kernel reserves them and /proc/ioports lists them.
FIRMWARE_DECLARED_PORTS = frozenset({"sync-pio", "vpic", "vioapic", "async-pio", "bochs-shutdown"})


def firmware_declared_ports(bus: PioBus) -> list[tuple[int, int]]:
    """(base, size) of the FIRMWARE_DECLARED_PORTS this machine has, in address order."""
    return [(r.base, r.size) for r in bus.regions() if r.name in FIRMWARE_DECLARED_PORTS]


def _fixed_line(m: PlatformHost, config: MachineConfig, gsi: int) -> IrqLine | None:
    """A PC-numbered line (COM1's 4, the keyboard's 1...); None without the in-kernel irqchip."""
    return m.irqs.line(gsi) if config.irqchip else None


def _suspend(m: PlatformHost) -> None:
    """PM1a_CNT asked for S3: an effect of that write for an observer (replay checks a model still asks)."""
    if m.observer is not None:
        m.observer.sleep()
    m.request_suspend()


def add_platform_devices(m: PlatformHost, config: MachineConfig) -> None:
    """The fixed device set, in a fixed order (so port and slot numbers never depend on imports)."""
    register_legacy_ports(m.pio_bus, lambda: m.request_exit(exitcodes.OK, "reset via port 0x92"))
    m.add_pio(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit(m.debug_exit))
    m.add_pio(SHUTDOWN_PORT, 1, BochsShutdown(lambda status: m.request_exit(status, "guest powered off")))
    kbc = I8042(
        lambda: m.request_exit(exitcodes.OK, "reset via the i8042"),
        _fixed_line(m, config, KBD_IRQ),
        _fixed_line(m, config, AUX_IRQ),
    )
    m.add_pio(I8042_DATA, 1, kbc.data_port(), owner=kbc, name="i8042 data")
    m.add_pio(I8042_COMMAND, 1, kbc.command_port(), owner=kbc, name="i8042 command")
    m.rtc = Cmos(config.mem_size, clock=m.clock.gmtime, phase_ns=m.clock.monotonic_ns)
    m.add_pio(CMOS_INDEX, CMOS_SIZE, m.rtc)
    m.acpi_pm = AcpiPm(lambda: m.request_exit(exitcodes.OK, "ACPI power-off"), lambda: _suspend(m))
    m.add_pio(PM1A_EVT, PM_BLOCK_SIZE, m.acpi_pm)
    m.add_pio(PM_TIMER_PORT, PM_TIMER_SIZE, PmTimer(m.clock.monotonic_ns))
    if config.hpet is not False:
        # A platform device like the PM timer, so --no-demo-devices keeps it: test kernels expect it.
        m.add_mmio(HPET_BASE, HPET_SIZE, Hpet(hpet_lines(m, config), m.loop.call_later, m.clock.monotonic_ns))
    output = config.serial_output or stdout_writer
    m.serial = Serial8250(output, _fixed_line(m, config, COM1_IRQ), name="ttyS0")
    m.add_pio(COM1_BASE, UART_SIZE, m.serial)
    if config.demo_devices:
        m.add_pio(SYNC_PIO_BASE, SYNC_BLOCK_SIZE, SyncRegisters("sync-pio"))
        m.add_mmio(SYNC_MMIO_BASE, SYNC_BLOCK_SIZE, SyncRegisters("sync-mmio"))
        for spec in ASYNC_DEVICES:
            line = (m.irqs.alloc_edge_line if spec.edge else m.irqs.alloc_line)(spec.name, spec.irq_kind)
            device = AsyncDemo(spec, line, m.loop.call_later, config.async_delay)
            (m.add_pio if spec.pio else m.add_mmio)(spec.base, ASYNC_BLOCK_SIZE, device)
            m.doorbells.add(
                pio=spec.pio,
                addr=spec.base,
                length=spec.doorbell_width,
                datamatch=None,
                callback=device.ring,
                owner=spec.name,
            )
        m.add_mmio(LOG_BASE, LOG_SIZE, CoalescedLog(), coalesced=True)
    m.pci = pci = PciHost(m.pio_bus, m.mmio_bus, doorbells=m.doorbells)
    if config.demo_devices:
        add_pci_demo_devices(m, pci, config)
    if config.testdev:
        add_qemu_test_devices(m, pci, config)
    if config.disks or config.virtio_rng or config.virtio_console:
        add_virtio_devices(
            m,
            config.disks,
            rng=config.virtio_rng,
            console=config.virtio_console,
            transport=config.virtio_transport,
            open_disk=config.open_disk,
        )
    for user_spec in config.devices:  # last: a user's device never moves a built-in one
        add_device_spec(m, user_spec)


def hpet_lines(m: PlatformHost, config: MachineConfig) -> dict[int, IrqLine]:
    """IOAPIC input -> line, for every input in the HPET's INT_ROUTE_CAP and the legacy-replacement ones.
    Input 2 is GSI 0 here (core/irq.py: the ISA timer override; GSI 2 is the unrouted cascade), as in
    QEMU, whose legacy timer 0 raises ISA IRQ 0. Not reserved in the allocator: the guest picks the
    route, and may share a PCI line as on QEMU."""
    if not config.irqchip:
        return {}
    inputs = sorted({pin for pin in range(32) if INT_ROUTE_CAP >> pin & 1} | set(LEGACY_ROUTES))
    return {pin: m.irqs.line(0 if pin == 2 else pin) for pin in inputs}


def add_pci_demo_devices(m: PlatformHost, pci: PciHost, config: MachineConfig) -> None:
    """The seed's PCI demos (spec §6.3), in this fixed order: slots 1-12, whatever gets imported when.

    INTx devices get IOAPIC-only lines (16 and up, level-triggered, active high); MSI/MSI-X devices
    deliver through KVM_SIGNAL_MSI. The async "work" takes ``config.async_delay`` seconds (Broiler:
    2 s, or 5 s for the INTx and DMA demos).
    """
    delay, schedule, msi = config.async_delay, m.loop.call_later, m.irqs.send_msi

    def intx(name: str) -> IrqLine:
        return m.irqs.alloc_line(name, "ioapic")

    pci_devices: list[PciFunction] = [
        SyncPioPci(),
        SyncMmioPci(),
        PciBaseDemo(),
        AsyncPioPci(irq=intx("async-pio-pci"), schedule=schedule, delay=delay),
        AsyncMmioPci(irq=intx("async-mmio-pci"), schedule=schedule, delay=delay),
        IntxDemoPci(irq=intx("intx-pci"), schedule=schedule, delay=delay),
        MsiDemoPci(msi_sink=msi, schedule=schedule, delay=delay),
        MsixDemoPci(msi_sink=msi, schedule=schedule, delay=delay),
        DmaIntxPci(memory=m.dma_memory, irq=intx("dma-intx-pci"), schedule=schedule, delay=delay),
        DmaMsiPci(memory=m.dma_memory, msi_sink=msi, schedule=schedule, delay=delay),
        DmaMsixPci(memory=m.dma_memory, msi_sink=msi, schedule=schedule, delay=delay),
        DmaBufPci(memory=m.dma_memory, msi_sink=msi, schedule=schedule, delay=0.0),
    ]
    for device in pci_devices:
        pci.add(device)


def add_qemu_test_devices(m: PlatformHost, pci: PciHost, config: MachineConfig) -> None:
    """QEMU's test devices, for kernels written against them (kvm-unit-tests style; issue 5)."""
    m.add_pio(FW_CFG_PORT, FW_CFG_PORT_SIZE, FwCfg(ram_size=config.mem_size, cpus=config.cpus))
    # pc-testdev's "flush page" is a documented no-op: KVM shares broiler's pages, so there is
    # nothing stale to re-fault (QEMU mprotects the page to force a re-fault of its own mapping).
    testdev = PcTestdev.create(lines=[_fixed_line(m, config, n) for n in range(IRQ_LINES)], flush_page=lambda gpa: None)
    for kind, base, size, device, name in testdev.regions():
        (m.add_pio if kind == "pio" else m.add_mmio)(base, size, device, name=name)
    pci.add(PciTestDev())


class PlatformSketch:
    """The platform's buses and devices without a VM: what `broiler layout` prints."""

    def __init__(self, config: MachineConfig, clock: DeviceClock | None = None) -> None:
        self.config = config
        self.map = MemoryMap(config.mem_size)
        self.pio_bus = PioBus()
        self.mmio_bus = MmioBus()
        self.devices: list[Device] = []
        self.serial: Serial8250 | None = None
        self.irqs = _SketchInterrupts()
        self.loop = EventLoop()  # never started: nothing is scheduled without a guest
        # Never started unless a test hands one in: replay feeds the recorded time through its hook.
        self.clock = clock or DeviceClock()
        self.doorbells = Doorbells(None, self.loop)
        self.memory = GuestMemory(self.map)  # lazily mapped: costs nothing untouched
        self.dma_memory = DeviceMemory(self.memory)
        self.observer: Observer | None = None
        self.pci: PciHost | None = None
        self.device_faults: list[str] = []
        self.user_contexts: list[DeviceContext] = []
        self.rtc: Cmos | None = None
        self.acpi_pm: AcpiPm | None = None
        self.on_stop: list[Callable[[], None]] = []  # closes what add_platform_devices opened (disks)
        add_platform_devices(self, config)

    def close(self) -> None:
        for hook in self.on_stop:
            hook()
        self.on_stop.clear()

    def add_pio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region:
        self.devices.append(device)
        return self.pio_bus.register(base, size, device, owner=owner, name=name)

    def add_mmio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region:
        self.devices.append(device)
        return self.mmio_bus.register(base, size, device, owner=owner, name=name)

    def request_exit(self, status: int, reason: str) -> None:
        return None

    def debug_exit(self, status: int) -> None:
        return None

    def request_suspend(self) -> None:
        return None


class _SketchInterrupts:
    """Machine.irqs without a VM: GSIs are allocated as on a machine; lines only tell an observer (replay)."""

    def __init__(self) -> None:
        self.allocator = IrqAllocator()
        self.observer: Observer | None = None

    def set_observer(self, observer: Observer) -> None:
        self.observer = observer

    def line(self, gsi: int) -> _SketchLine:
        return _SketchLine(gsi, self)

    def alloc_line(self, owner: str, kind: str = "isa") -> _SketchLine:
        return _SketchLine(self.allocator.alloc(owner, kind), self)

    def alloc_edge_line(self, owner: str, kind: str = "isa") -> _SketchLine:
        return _SketchLine(self.allocator.alloc(owner, kind), self, edge=True)

    def send_msi(self, message: MsiMessage) -> None:
        # As Interrupts.signal_msi: only the LAPIC window is an interrupt.
        if self.observer is not None and message.address >> 20 == 0xFEE:
            self.observer.emit("irq", "w", message.address, 4, message.data, MSI_DIRECT)

    def msi_irqfd_sink(self, slots: int) -> MsiSink:
        return self.send_msi


class _SketchLine:
    """A line that drives nothing; like KvmIrqLine (or IrqFd for ``edge``) it reports changes to an observer."""

    def __init__(self, gsi: int, irqs: _SketchInterrupts, *, edge: bool = False) -> None:
        self.gsi = gsi
        self.irqs = irqs
        self.edge = edge
        self.level = 0

    def set_level(self, level: bool) -> None:
        if self.edge:
            if level:
                self.pulse()
            return
        observer = self.irqs.observer
        if observer is not None and int(level) != self.level:
            observer.emit("irq", "w", self.gsi, 0, int(level), LINE_RAISED if level else LINE_LOWERED)
        self.level = int(level)

    def pulse(self) -> None:
        if self.irqs.observer is not None:
            self.irqs.observer.emit("irq", "w", self.gsi, 0, 1, LINE_IRQFD if self.edge else LINE_PULSED)
        self.level = 0
