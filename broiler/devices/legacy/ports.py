"""Quiet stand-ins for the legacy PC ports that guests probe (spec §2.7, kvmtool x86/ioport.c).

They read all ones (no hardware there) and drop writes, like unmapped ports, but without being
counted or logged as unmapped: a PC guest touching them is normal. Port 0x92 (System Control
Port A) is modelled: it reads 0x02 ("A20 enabled") and a write with bit 0 set is a fast reset.

Left out on purpose: 0x20/0xA0 (PIC), 0x40-0x43 and 0x61 (PIT), 0x4D0/0x4D1 (ELCR), which the
in-kernel irqchip and PIT answer before userspace sees them; 0xE0-0xEF and 0x510-0x511, which
belong to pc-testdev and fw_cfg when those are enabled.
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.bus import Bus, Device
from ...core.state import STATELESS

DUMMY_RANGES = [
    (0x00, 0x20, "dma1"),
    (0x80, 0x10, "dma page regs / POST"),  # Linux writes 0x80 for IO delays
    (0xC0, 0x20, "dma2"),
    (0xF0, 0x02, "fpu"),
    (0x278, 0x03, "parport1"),
    (0x378, 0x03, "parport0"),
    (0x3D4, 0x02, "vga crtc"),
]
PORT_A_BASE = 0x92


class DummyPorts(Device):
    """Reads all ones, ignores writes; counts nothing."""

    state_fields = STATELESS

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SystemControlPortA(Device):
    """Port 0x92: bit 1 = A20 (always on), bit 0 = fast reset (write 1)."""

    name = "port92"
    state_fields = STATELESS  # A20 is always on

    def __init__(self, reset: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._reset = reset

    def read(self, offset: int, size: int) -> int:
        return 0x02

    def write(self, offset: int, size: int, value: int) -> None:
        if value & 1 and self._reset is not None:
            self._reset()


def register_legacy_ports(bus: Bus, reset: Callable[[], None] | None = None) -> None:
    for base, size, name in DUMMY_RANGES:
        bus.register(base, size, DummyPorts(name), owner="legacy", name=name)
    bus.register(PORT_A_BASE, 1, SystemControlPortA(reset), owner="legacy", name="port92")
