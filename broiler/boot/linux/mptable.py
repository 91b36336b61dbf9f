"""Intel MultiProcessor Specification 1.4 tables: floating pointer and configuration table.

Kernels built with CONFIG_X86_MPPARSE (Debian's generic kernel) find CPUs and the IOAPIC here when
ACPI is absent or disabled. Layout (MP spec 1.4, chapter 4):

- floating pointer, 16 bytes: "_MP_", u32 physical address of the configuration table, u8 length
  in 16-byte units (1), u8 spec revision (4), u8 checksum, 5 feature bytes (all 0: a configuration
  table is present; IMCR absent = virtual-wire mode);
- configuration table header, 44 bytes: "PCMP", u16 base table length, u8 revision (4), u8
  checksum, 8-byte OEM id, 12-byte product id, u32 OEM table pointer, u16 OEM table size, u16 entry
  count, u32 local APIC address, u16 extended table length, u8 extended checksum, u8 reserved;
- entries, sorted by type as the spec requires: processors (20 bytes each), buses, IOAPICs,
  I/O interrupt assignments, local interrupt assignments (8 bytes each).

Deviation from Broiler (spec §7.7, §10 items 5 and 6): LINT0 is ExtINT (Broiler overwrote it with
INT), the PCI source IRQ uses the device number (Broiler used the subsystem id), there are ISA IRQ
entries, and the floating pointer comes first.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..firmware import (
    APIC_VERSION,
    IOAPIC_ADDR,
    IOAPIC_VERSION,
    LAPIC_ADDR,
    CpuEntry,
    PciIrq,
    checksum,
    ioapic_id,
)

MP_SPEC_REV = 4
OEM_ID = b"BROILER "
PRODUCT_ID = b"KVM-PVM VMM "

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IOINT, ENTRY_LINT = 0, 1, 2, 3, 4
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_SMI, INT_TYPE_EXTINT = 0, 1, 2, 3
CPU_ENABLED, CPU_BSP = 0x01, 0x02
PCI_BUS_ID, ISA_BUS_ID = 0, 1
DEST_ALL_LAPICS = 0xFF
CPU_SIGNATURE = 0x600  # family 6; Linux only prints it
CPU_FEATURES = 0x201  # FPU (bit 0) and on-chip APIC (bit 9), as kvmtool and Broiler report
ISA_IRQS = tuple(i for i in range(16) if i != 2)  # IRQ 2 is the PIC cascade; IRQ 0 takes its pin
HEADER_SIZE = 44
FLOATING_SIZE = 16


def _processor(cpu: CpuEntry) -> bytes:
    flags = (CPU_ENABLED if cpu.enabled else 0) | (CPU_BSP if cpu.bsp else 0)
    return struct.pack("<BBBBII8x", ENTRY_PROCESSOR, cpu.apic_id, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES)


def _bus(bus_id: int, name: bytes) -> bytes:
    return struct.pack("<BB6s", ENTRY_BUS, bus_id, name.ljust(6))


def _ioint(int_type: int, bus: int, bus_irq: int, apic: int, pin: int, flags: int = 0) -> bytes:
    # flags 0 = "conforms to the bus": ISA edge/active-high, PCI level/active-low.
    return struct.pack("<BBHBBBB", ENTRY_IOINT, int_type, flags, bus, bus_irq, apic, pin)


def _lint(int_type: int, lint: int) -> bytes:
    return struct.pack("<BBHBBBB", ENTRY_LINT, int_type, 0, ISA_BUS_ID, 0, DEST_ALL_LAPICS, lint)


def pci_source_irq(irq: PciIrq) -> int:
    """MP spec, PCI bus: bits 6:2 device number, bits 1:0 pin (0 = INTA#)."""
    return (irq.slot << 2) | (irq.pin - 1)


def mp_entries(cpu_list: Sequence[CpuEntry], pci_irqs: Sequence[PciIrq]) -> list[bytes]:
    ioapic = ioapic_id(cpu_list)
    entries = [_processor(c) for c in cpu_list]
    entries += [_bus(PCI_BUS_ID, b"PCI"), _bus(ISA_BUS_ID, b"ISA")]
    entries.append(struct.pack("<BBBBI", ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 0x01, IOAPIC_ADDR))
    for irq in ISA_IRQS:
        entries.append(_ioint(INT_TYPE_INT, ISA_BUS_ID, irq, ioapic, 2 if irq == 0 else irq))
    for p in pci_irqs:
        entries.append(_ioint(INT_TYPE_INT, p.bus, pci_source_irq(p), ioapic, p.gsi))
    entries += [_lint(INT_TYPE_EXTINT, 0), _lint(INT_TYPE_NMI, 1)]
    return entries


def build_mptable(cpu_list: Sequence[CpuEntry], pci_irqs: Sequence[PciIrq], base: int) -> bytes:
    """Floating pointer at ``base`` followed by the configuration table at ``base + 16``.

    ``base`` must be 16-byte aligned and inside a region Linux scans (the F-segment)."""
    if base % 16:
        raise ValueError("the MP floating pointer must be 16-byte aligned")
    entries = mp_entries(cpu_list, pci_irqs)
    body = b"".join(entries)
    length = HEADER_SIZE + len(body)
    header = bytearray(
        struct.pack(
            "<4sHBB8s12sIHHIHBB",
            b"PCMP",
            length,
            MP_SPEC_REV,
            0,
            OEM_ID,
            PRODUCT_ID,
            0,
            0,
            len(entries),
            LAPIC_ADDR,
            0,
            0,
            0,
        )
    )
    table = header + body
    table[7] = checksum(table)
    fp = bytearray(struct.pack("<4sIBBB5s", b"_MP_", base + FLOATING_SIZE, 1, MP_SPEC_REV, 0, bytes(5)))
    fp[10] = checksum(fp)
    return bytes(fp + table)
