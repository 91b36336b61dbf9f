"""Minimal ACPI tables, for Linux (Debian's cloud kernel finds CPUs and the IOAPIC only through ACPI)
and for Multiboot test kernels (which look for what QEMU's pc machine gives them).

Tables, laid out contiguously from ``base`` (normally ACPI_ADDR in the F-segment, where Linux and test
kernels scan 0xE0000-0xFFFFF for the RSDP on 16-byte boundaries):

- RSDP (ACPI 2.0+, 36 bytes) with the checksum of the first 20 bytes and the extended checksum;
- FACS (64 bytes, 64-byte aligned; required when the FADT is not hardware-reduced);
- DSDT: \\_SB.PCI0 (PNP0A03 host bridge: _SEG, _BBN, _UID, _CRS windows, _PRT for PCI INTx),
  \\_SB.MRES (PNP0C02 reserving the ECAM window, which Linux wants before it trusts MCFG),
  \\_SB.DEMO (PNP0C02 reserving the platform's demo ports, so /proc/ioports shows them),
  \\_S3 (suspend to RAM, SLP_TYP 1 as QEMU's; resume through the FACS waking vector: vmm/sleep.py) and
  \\_S5 (so Linux registers ACPI power-off: a write to PM1a_CNT with SLP_EN);
- FADT (revision 6, 276 bytes): not hardware-reduced, SCI = IRQ 9, no SMI command port (always in
  ACPI mode), PM1a event/control blocks at ports 0x600/0x604, the 24-bit PM timer at port 0x608
  (QEMU's PIIX4 places it at PM base + 8 too; TMR_VAL_EXT clear), reset register =
  port 0x64 value 0xFE (the i8042 reset broiler already turns into a VM exit), IAPC_BOOT_ARCH =
  legacy devices | 8042 | no VGA, RTC century index 0x32; FACS only in the 32-bit field;
- MADT: one local APIC per CPU, the IOAPIC (GSI base 0), overrides IRQ0->GSI2 and SCI (IRQ 9,
  level, active high), local APIC NMI on LINT1 for all CPUs;
- MCFG: the ECAM window (segment 0, buses 0..15);
- HPET (only with the HPET, ``--hpet on``): the block at 0xFED00000, QEMU's values; the DSDT then also
  has \\_SB.HPET (PNP0103 with the 1 KiB block in _CRS), as QEMU's does;
- RSDT and XSDT, both pointing at FADT, MADT, MCFG (and HPET).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.memory import PCI_ECAM_BASE, PCI_ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START, GuestMemory, MapRange
from ..devices.legacy.acpi_pm import S3_SLP_TYP, S5_SLP_TYP
from ..devices.legacy.hpet import CAPABILITIES as HPET_CAPABILITIES
from ..devices.legacy.hpet import HPET_BASE, HPET_SIZE
from ..errors import ConfigError
from . import aml
from .firmware import IOAPIC_ADDR, LAPIC_ADDR, CpuEntry, PciIrq, checksum, cpus, ioapic_id

OEM_ID = b"BROILR"
OEM_TABLE_ID = b"BROILER "
OEM_REVISION = 1
CREATOR_ID = b"BRLR"
CREATOR_REVISION = 1

SCI_IRQ = 9
PM1A_EVT_PORT = 0x600  # PM1 status (u16) + enable (u16)
PM1A_CNT_PORT = 0x604  # PM1 control (u16): SLP_TYP bits 12:10, SLP_EN bit 13
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_PORT = 0x608  # devices/legacy/pm_timer.py
PM_TMR_LEN = 4
ACPI_ADDR = 0xF1000  # the RSDP, then the tables (F-segment: e820-reserved, inside the RSDP scan range)
ACPI_END = 0xFD000
ACPI_AREA = MapRange(ACPI_ADDR, ACPI_END, "ACPI tables")
FACS_OFFSET = 64  # from the RSDP: the FACS wants 64-byte alignment
FACS_ADDR = ACPI_ADDR + FACS_OFFSET  # where write_acpi puts it: the waking vector is read there (vmm/sleep.py)
SLP_EN = 1 << 13
RESET_PORT = 0x64
RESET_VALUE = 0xFE
ECAM_BUS_END = PCI_ECAM_SIZE // (1 << 20) - 1

# FADT flags and IAPC_BOOT_ARCH bits (ACPI 6.4, 5.2.9)
FADT_WBINVD, FADT_PROC_C1, FADT_PWR_BUTTON, FADT_SLP_BUTTON = 1 << 0, 1 << 2, 1 << 4, 1 << 5
FADT_RESET_REG_SUP, FADT_HW_REDUCED = 1 << 10, 1 << 20
IAPC_LEGACY_DEVICES, IAPC_8042, IAPC_NO_VGA = 1 << 0, 1 << 1, 1 << 2
FADT_SIZE = 276

# MADT (ACPI 6.4, 5.2.12)
MADT_PCAT_COMPAT = 1
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
MPS_INTI_LEVEL_HIGH = 0x000D  # polarity 01 (active high) | trigger 11 << 2 (level)

GAS_SYSTEM_IO = 1


def table_header(signature: bytes, length: int, revision: int) -> bytes:
    return struct.pack(
        "<4sIBB6s8sI4sI",
        signature,
        length,
        revision,
        0,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        CREATOR_ID,
        CREATOR_REVISION,
    )


def finish_table(signature: bytes, revision: int, body: bytes) -> bytes:
    """Header + body with the length and the checksum (byte 9) filled in."""
    t = bytearray(table_header(signature, 36 + len(body), revision) + body)
    t[9] = checksum(t)
    return bytes(t)


def gas(space: int, bit_width: int, address: int, access_size: int = 0) -> bytes:
    """Generic Address Structure, 12 bytes."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def build_rsdp(rsdt: int, xsdt: int) -> bytes:
    r = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt, 36, xsdt, 0))
    r[8] = checksum(r[:20])
    r[32] = checksum(r)
    return bytes(r)


def build_facs() -> bytes:
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", 64, 0, 0, 0, 0, 0, 2, 0)


def _motherboard_devices(reserve_ecam: bool, reserved_io: Sequence[tuple[int, int]], hpet: bool) -> list[bytes]:
    """The \\_SB devices besides PCI0: resources the OS must reserve (ECAM, demo ports, the HPET)."""
    sb: list[bytes] = []
    if reserve_ecam:
        sb.append(
            aml.device(
                "MRES",
                aml.name("_HID", aml.eisa_id("PNP0C02")),
                aml.name("_UID", aml.integer(1)),
                aml.name("_CRS", aml.resource_template(aml.memory32_fixed(PCI_ECAM_BASE, PCI_ECAM_SIZE))),
            )
        )
    if reserved_io:
        # Ports no Linux driver claims (the seed's demo devices): declared as motherboard resources so
        # Linux's PnP "system" driver reserves them and /proc/ioports names them.
        sb.append(
            aml.device(
                "DEMO",
                aml.name("_HID", aml.eisa_id("PNP0C02")),
                aml.name("_UID", aml.integer(2)),
                aml.name("_CRS", aml.resource_template(*(aml.io_port(base, size) for base, size in reserved_io))),
            )
        )
    if hpet:
        # QEMU's DSDT declares its HPET too (PNP0103, the 1 KiB block), so the OS reserves the range.
        sb.append(
            aml.device(
                "HPET",
                aml.name("_HID", aml.eisa_id("PNP0103")),
                aml.name("_UID", aml.integer(0)),
                aml.name("_CRS", aml.resource_template(aml.memory32_fixed(HPET_BASE, HPET_SIZE))),
            )
        )
    return sb


def build_dsdt(
    pci_irqs: Sequence[PciIrq],
    *,
    reserve_ecam: bool = True,
    reserved_io: Sequence[tuple[int, int]] = (),
    hpet: bool = False,
) -> bytes:
    prt = [
        aml.package(aml.integer((p.slot << 16) | 0xFFFF), aml.integer(p.pin - 1), aml.integer(0), aml.integer(p.gsi))
        for p in pci_irqs
        if p.bus == 0
    ]
    crs = aml.resource_template(
        aml.word_bus_number(0, ECAM_BUS_END),
        aml.word_io(0x0000, 0x0CF7),  # everything but the CF8-CFF configuration ports
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(PCI_MMIO_START, PCI_MMIO_END - 1),
    )
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", crs),
        aml.name("_PRT", aml.package(*prt)),
    )
    sb = [pci0, *_motherboard_devices(reserve_ecam, reserved_io, hpet)]
    body = aml.scope("\\_SB", *sb) + sleep_state("\\_S3", S3_SLP_TYP) + sleep_state("\\_S5", S5_SLP_TYP)
    return finish_table(b"DSDT", 2, body)  # revision 2: 64-bit AML integers


def sleep_state(name: str, slp_typ: int) -> bytes:
    """Name(\\_Sx, Package {PM1a SLP_TYP, PM1b SLP_TYP, 0, 0}): what OSPM writes to PM1a_CNT for state x."""
    return aml.name(name, aml.package(aml.integer(slp_typ), aml.integer(slp_typ), aml.integer(0), aml.integer(0)))


def build_fadt(*, facs: int, dsdt: int) -> bytes:
    f = bytearray(FADT_SIZE)
    struct.pack_into("<IIBBHI", f, 36, facs, dsdt, 0, 0, SCI_IRQ, 0)  # no SMI_CMD: always ACPI mode
    struct.pack_into("<II", f, 56, PM1A_EVT_PORT, 0)
    struct.pack_into("<II", f, 64, PM1A_CNT_PORT, 0)
    struct.pack_into("<I", f, 76, PM_TMR_PORT)
    struct.pack_into("<BB", f, 88, PM1_EVT_LEN, PM1_CNT_LEN)
    f[91] = PM_TMR_LEN
    f[108] = 0x32  # RTC CMOS century index
    struct.pack_into("<H", f, 109, IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_NO_VGA)
    struct.pack_into("<I", f, 112, FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP)
    f[116:128] = gas(GAS_SYSTEM_IO, 8, RESET_PORT, 1)
    f[128] = RESET_VALUE
    # X_FIRMWARE_CTRL stays 0: the spec wants it zero when FIRMWARE_CTRL is set (Linux would list the
    # FACS twice otherwise). X_DSDT may repeat DSDT.
    struct.pack_into("<QQ", f, 132, 0, dsdt)
    f[148:160] = gas(GAS_SYSTEM_IO, PM1_EVT_LEN * 8, PM1A_EVT_PORT, 2)
    f[172:184] = gas(GAS_SYSTEM_IO, PM1_CNT_LEN * 8, PM1A_CNT_PORT, 2)
    f[208:220] = gas(GAS_SYSTEM_IO, PM_TMR_LEN * 8, PM_TMR_PORT, 3)
    f[268:276] = b"BROILER\0"  # hypervisor vendor identity
    return finish_table(b"FACP", 6, bytes(f[36:]))


def build_madt(cpu_list: Sequence[CpuEntry]) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, MADT_PCAT_COMPAT))
    for c in cpu_list:
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, c.apic_id, c.apic_id, 1 if c.enabled else 0)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, ioapic_id(cpu_list), 0, IOAPIC_ADDR, 0)
    body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, 0, 2, 0)  # ISA IRQ0 -> GSI 2
    body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, SCI_IRQ, SCI_IRQ, MPS_INTI_LEVEL_HIGH)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, 0, 1)  # all CPUs, LINT1
    return finish_table(b"APIC", 5, bytes(body))


def build_mcfg(ecam_base: int = PCI_ECAM_BASE, bus_end: int = ECAM_BUS_END) -> bytes:
    body = bytes(8) + struct.pack("<QHBBI", ecam_base, 0, 0, bus_end, 0)
    return finish_table(b"MCFG", 1, body)


def build_hpet_table() -> bytes:
    """The HPET description table (IA-PC HPET 1.0a, 3.2.4), with QEMU's values: HPET number 0, minimum
    periodic tick 0, no page protection; the block ID is the low half of the capabilities register."""
    body = struct.pack("<I", HPET_CAPABILITIES & 0xFFFF_FFFF) + gas(0, 0, HPET_BASE) + struct.pack("<BHB", 0, 0, 0)
    return finish_table(b"HPET", 1, body)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True, slots=True)
class AcpiTables:
    base: int
    blob: bytes = field(repr=False)
    addresses: dict[str, int]  # signature -> guest-physical address

    @property
    def rsdp_addr(self) -> int:
        return self.addresses["RSDP"]


def build_acpi(
    cpu_list: Sequence[CpuEntry],
    pci_irqs: Sequence[PciIrq],
    base: int,
    *,
    reserve_ecam: bool = True,
    reserved_io: Sequence[tuple[int, int]] = (),
    hpet: bool = False,
) -> AcpiTables:
    """Every table, placed from ``base`` (16-byte aligned). Write ``blob`` at ``base``. ``hpet``: the
    machine has the HPET (devices/legacy/hpet.py): describe it (HPET table, DSDT device)."""
    if base % 64:
        raise ValueError("the ACPI area must be 64-byte aligned (the FACS needs it)")
    addrs: dict[str, int] = {"RSDP": base, "FACS": base + FACS_OFFSET}
    dsdt = build_dsdt(pci_irqs, reserve_ecam=reserve_ecam, reserved_io=reserved_io, hpet=hpet)
    fadt = build_fadt(facs=addrs["FACS"], dsdt=base + 128)
    madt = build_madt(cpu_list)
    tables = [("DSDT", dsdt), ("FACP", fadt), ("APIC", madt), ("MCFG", build_mcfg())]
    if hpet:
        tables.append(("HPET", build_hpet_table()))
    pos = base + 128
    parts: list[tuple[int, bytes]] = [(addrs["FACS"], build_facs())]
    for sig, table in tables:
        addrs[sig] = pos
        parts.append((pos, table))
        pos = _align(pos + len(table), 16)
    pointed = [addrs[sig] for sig, _ in tables if sig != "DSDT"]
    rsdt = finish_table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in pointed))
    addrs["RSDT"] = pos
    parts.append((pos, rsdt))
    pos = _align(pos + len(rsdt), 16)
    xsdt = finish_table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in pointed))
    addrs["XSDT"] = pos
    parts.append((pos, xsdt))
    parts.append((base, build_rsdp(addrs["RSDT"], addrs["XSDT"])))
    blob = bytearray(pos + len(xsdt) - base)
    for addr, data in parts:
        blob[addr - base : addr - base + len(data)] = data
    return AcpiTables(base, bytes(blob), addrs)


def write_acpi(
    mem: GuestMemory,
    ncpus: int,
    pci_irqs: Sequence[PciIrq],
    *,
    reserved_io: Sequence[tuple[int, int]] = (),
    hpet: bool = False,
) -> AcpiTables:
    """Build every table for ``ncpus`` CPUs at ACPI_ADDR and write them into guest RAM."""
    acpi = build_acpi(cpus(ncpus), pci_irqs, ACPI_ADDR, reserved_io=reserved_io, hpet=hpet)
    if ACPI_ADDR + len(acpi.blob) > ACPI_END:
        raise ConfigError(f"the ACPI tables for {ncpus} CPUs do not fit below 1 MiB")
    mem.write(ACPI_ADDR, acpi.blob)
    return acpi
