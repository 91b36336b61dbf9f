"""PCI for broiler: configuration space, BARs that follow the guest, INTx/MSI/MSI-X, the host bridge.

Pure device models (sans-IO): interrupts and timers come in as ``broiler.core.irq.IrqLine`` /
``MsiSink`` and ``broiler.core.eventloop.Schedule``, doorbells through
``broiler.pci.interfaces.Doorbells``. See docs/pci.md for the guest-visible rules.

Typical wiring::

    host = PciHost(pio_bus, mmio_bus, doorbells=doorbells)
    fn = PciFunction(vendor_id=0x1234, device_id=0x5678, name="mine")
    fn.add_bar(0, BarKind.IO, 0x100, MyRegisters(), doorbells=[BarDoorbell(0x10, 2, None, on_kick)])
    fn.set_intx(irq_line)
    host.add(fn)            # -> slot 1: BAR0 at 0x6200, IO decode on
"""

from .bar import Bar, BarDoorbell, BarKind, BarWindow, IoAllocator, MmioAllocator
from .config import ConfigSpace
from .function import PciFunction
from .host import ConfigMechanism1, Ecam, HostBridge, PciHost
from .interfaces import DoorbellCallback, Doorbells
from .msi import MsiCapability, MsixCapability

__all__ = [
    "Bar",
    "BarDoorbell",
    "BarKind",
    "BarWindow",
    "ConfigMechanism1",
    "ConfigSpace",
    "DoorbellCallback",
    "Doorbells",
    "Ecam",
    "HostBridge",
    "IoAllocator",
    "MmioAllocator",
    "MsiCapability",
    "MsixCapability",
    "PciFunction",
    "PciHost",
]
