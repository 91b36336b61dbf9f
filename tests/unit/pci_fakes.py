"""A PCI host on real buses with fake doorbells (``Rig``), and a guest's view of configuration space.

The fakes themselves (lines, MSI sink, scheduler, doorbells) live in ``tests/unit/fakes.py``.
"""

from __future__ import annotations

from broiler.core.bus import Bus, MmioBus, PioBus
from broiler.core.memory import PCI_ECAM_BASE
from broiler.pci import PciHost
from tests.unit.fakes import FakeDoorbells


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
