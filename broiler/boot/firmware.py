"""Inputs shared by the MP table and the ACPI tables, and the byte-sum checksum both use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.memory import IOAPIC_BASE, LAPIC_BASE
from ..errors import ConfigError
from ..pci import PciHost

APIC_VERSION = 0x14  # what KVM's in-kernel local APIC reports
IOAPIC_VERSION = 0x11  # what KVM's in-kernel IOAPIC reports (24 pins)
IOAPIC_PINS = 24
LAPIC_ADDR = LAPIC_BASE
IOAPIC_ADDR = IOAPIC_BASE


@dataclass(frozen=True, slots=True)
class CpuEntry:
    """One vCPU as firmware describes it. APIC ID = vCPU id in broiler."""

    apic_id: int
    bsp: bool = False
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class PciIrq:
    """A PCI function's INTx wiring: device ``slot`` on ``bus``, ``pin`` 1..4 (INTA#..INTD#), routed to
    IOAPIC input ``gsi``."""

    slot: int
    pin: int
    gsi: int
    bus: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.slot < 32:
            raise ValueError(f"PCI slot {self.slot} out of range 0..31")
        if not 1 <= self.pin <= 4:
            raise ValueError(f"PCI interrupt pin {self.pin} out of range 1..4 (INTA#..INTD#)")
        if not 0 <= self.gsi < IOAPIC_PINS:
            raise ValueError(f"GSI {self.gsi} is not an IOAPIC input (0..{IOAPIC_PINS - 1})")


def cpus(n: int) -> list[CpuEntry]:
    """``n`` vCPUs with APIC IDs 0..n-1; vCPU 0 boots."""
    if not 1 <= n <= 254:  # APIC IDs are 8 bits and the IOAPIC takes the next one
        raise ConfigError(f"{n} CPUs: broiler's firmware tables describe 1 to 254")
    return [CpuEntry(i, bsp=(i == 0)) for i in range(n)]


def ioapic_id(cpu_list: Sequence[CpuEntry]) -> int:
    """The IOAPIC gets the first APIC ID after the CPUs', so the two ID spaces never collide."""
    return max(c.apic_id for c in cpu_list) + 1


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with this byte stored as 0) sum to zero modulo 256."""
    return (-sum(data)) & 0xFF


def sums_to_zero(data: bytes | bytearray) -> bool:
    return sum(data) & 0xFF == 0


def pci_irqs(host: PciHost | None) -> list[PciIrq]:
    """INTx wiring of the PCI functions on ``host``, for the MP table and ACPI."""
    out: list[PciIrq] = []
    if host is None:
        return out
    for slot, fn in sorted(host.functions.items()):
        pin = fn.config.get(0x3D, 1)
        intx = getattr(fn, "intx", None)
        if pin and intx is not None:
            out.append(PciIrq(slot=slot, pin=pin, gsi=intx.gsi))
    return out
