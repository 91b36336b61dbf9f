"""MP table (Intel MP spec 1.4) and ACPI tables (ACPI 6.x): checksums, lengths, entry order, fields."""

from __future__ import annotations

import struct

import pytest

from broiler.boot import aml
from broiler.boot.acpi import build_acpi, build_dsdt, build_fadt, build_madt, build_mcfg
from broiler.boot.firmware import CpuEntry, PciIrq, checksum, cpus, sums_to_zero
from broiler.boot.linux.mptable import build_mptable, pci_source_irq
from broiler.errors import ConfigError

BASE_MP = 0xF0000
BASE_ACPI = 0xF1000
IRQS = [PciIrq(slot=1, pin=1, gsi=16), PciIrq(slot=3, pin=2, gsi=17)]


def u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


# --- MP table ----------------------------------------------------------------------------------


def parse_mp(blob: bytes) -> tuple[bytes, bytes, list[bytes]]:
    fp = blob[:16]
    table_addr = u(fp, 4, 4)
    table = blob[table_addr - BASE_MP :]
    length, count = u(table, 4, 2), u(table, 34, 2)
    table = table[:length]
    entries, pos = [], 44
    for _ in range(count):
        size = 20 if table[pos] == 0 else 8
        entries.append(table[pos : pos + size])
        pos += size
    assert pos == length
    return fp, table, entries


def test_mp_floating_pointer() -> None:
    fp, _, _ = parse_mp(build_mptable(cpus(2), IRQS, BASE_MP))
    assert fp[:4] == b"_MP_" and u(fp, 4, 4) == BASE_MP + 16
    assert fp[8] == 1 and fp[9] == 4 and fp[11:16] == bytes(5)
    assert sums_to_zero(fp)


def test_mp_header_and_checksum() -> None:
    _, table, entries = parse_mp(build_mptable(cpus(2), IRQS, BASE_MP))
    assert table[:4] == b"PCMP" and table[6] == 4
    assert sums_to_zero(table)
    assert u(table, 36, 4) == 0xFEE00000 and u(table, 34, 2) == len(entries)
    assert table[8:16] == b"BROILER " and len(table[16:28]) == 12


def test_mp_entries_in_spec_order() -> None:
    _, _, entries = parse_mp(build_mptable(cpus(3), IRQS, BASE_MP))
    types = [e[0] for e in entries]
    assert types == sorted(types)  # processors, buses, IOAPIC, I/O ints, LINTs
    procs = [e for e in entries if e[0] == 0]
    assert [(p[1], p[3]) for p in procs] == [(0, 0x3), (1, 0x1), (2, 0x1)]  # APIC id, EN|BP
    assert all(p[2] == 0x14 and u(p, 4, 4) == 0x600 and u(p, 8, 4) == 0x201 for p in procs)
    buses = [e for e in entries if e[0] == 1]
    assert [(b[1], b[2:8]) for b in buses] == [(0, b"PCI   "), (1, b"ISA   ")]
    (ioapic,) = [e for e in entries if e[0] == 2]
    assert ioapic[1] == 3 and ioapic[3] == 1 and u(ioapic, 4, 4) == 0xFEC00000  # id = ncpus


def test_mp_interrupt_entries() -> None:
    _, _, entries = parse_mp(build_mptable(cpus(2), IRQS, BASE_MP))
    ioints = [e for e in entries if e[0] == 3]
    isa = [(e[5], e[7]) for e in ioints if e[4] == 1]  # (source irq, IOAPIC pin)
    assert isa[0] == (0, 2)  # IRQ0 -> pin 2
    assert isa[1:] == [(i, i) for i in range(1, 16) if i != 2]
    pci = [(e[5], e[6], e[7]) for e in ioints if e[4] == 0]
    assert pci == [((1 << 2) | 0, 2, 16), ((3 << 2) | 1, 2, 17)]
    assert all(e[1] == 0 and u(e, 2, 2) == 0 for e in ioints)
    lints = [e for e in entries if e[0] == 4]
    assert [(e[1], e[6], e[7]) for e in lints] == [(3, 0xFF, 0), (1, 0xFF, 1)]  # ExtINT LINT0, NMI LINT1


def test_pci_source_irq() -> None:
    assert pci_source_irq(PciIrq(slot=31, pin=4, gsi=23)) == 0x7F


def test_pci_irq_validation() -> None:
    with pytest.raises(ValueError):
        PciIrq(slot=1, pin=0, gsi=16)
    with pytest.raises(ValueError):
        PciIrq(slot=32, pin=1, gsi=16)
    with pytest.raises(ValueError):
        PciIrq(slot=1, pin=1, gsi=24)


def test_mp_fits_many_cpus() -> None:
    assert len(build_mptable(cpus(64), IRQS, BASE_MP)) < 0x1000
    with pytest.raises(ConfigError, match="1 to 254"):
        cpus(255)


# --- ACPI ---------------------------------------------------------------------------------------


def table_at(acpi_blob: bytes, addr: int) -> bytes:
    off = addr - BASE_ACPI
    return acpi_blob[off : off + u(acpi_blob, off + 4, 4)]


def test_rsdp() -> None:
    t = build_acpi(cpus(2), IRQS, BASE_ACPI)
    rsdp = t.blob[:36]
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2 and u(rsdp, 20, 4) == 36
    assert sums_to_zero(rsdp[:20]) and sums_to_zero(rsdp)
    assert u(rsdp, 16, 4) == t.addresses["RSDT"] and u(rsdp, 24, 8) == t.addresses["XSDT"]
    assert t.rsdp_addr == BASE_ACPI and BASE_ACPI % 16 == 0


def test_every_table_checksum_and_length() -> None:
    t = build_acpi(cpus(4), IRQS, BASE_ACPI)
    for sig in ("DSDT", "FACP", "APIC", "MCFG", "RSDT", "XSDT"):
        tab = table_at(t.blob, t.addresses[sig])
        assert tab[:4] == sig.encode(), sig
        assert sums_to_zero(tab), sig
        assert tab[10:16] == b"BROILR"
    assert t.addresses["FACS"] % 64 == 0
    facs = t.blob[t.addresses["FACS"] - BASE_ACPI :][:64]
    assert facs[:4] == b"FACS" and u(facs, 4, 4) == 64 and facs[32] == 2


def test_rsdt_xsdt_point_at_fadt_madt_mcfg() -> None:
    t = build_acpi(cpus(1), [], BASE_ACPI)
    want = [t.addresses[s] for s in ("FACP", "APIC", "MCFG")]
    rsdt, xsdt = table_at(t.blob, t.addresses["RSDT"]), table_at(t.blob, t.addresses["XSDT"])
    assert list(struct.unpack_from("<3I", rsdt, 36)) == want and len(rsdt) == 36 + 12
    assert list(struct.unpack_from("<3Q", xsdt, 36)) == want and len(xsdt) == 36 + 24


def test_fadt_fields() -> None:
    f = build_fadt(facs=0xF1040, dsdt=0xF1080)
    assert len(f) == 276 and f[8] == 6 and sums_to_zero(f)
    assert u(f, 36, 4) == 0xF1040 and u(f, 40, 4) == 0xF1080
    assert u(f, 132, 8) == 0 and u(f, 140, 8) == 0xF1080  # X_FIRMWARE_CTRL 0, X_DSDT
    assert u(f, 46, 2) == 9 and u(f, 48, 4) == 0  # SCI, no SMI_CMD
    assert u(f, 109, 2) & 0x3 == 0x3  # legacy devices, 8042
    assert not u(f, 112, 4) & (1 << 20)  # not hardware-reduced
    assert u(f, 56, 4) == 0x600 and u(f, 64, 4) == 0x604 and f[88] == 4 and f[89] == 2
    assert u(f, 76, 4) == 0x608 and f[91] == 4  # PM_TMR_BLK, PM_TMR_LEN (QEMU's PM base + 8)
    assert f[208] == 1 and f[209] == 32 and u(f, 212, 8) == 0x608  # X_PM_TMR_BLK
    assert not u(f, 112, 4) & (1 << 8)  # TMR_VAL_EXT clear: a 24-bit counter
    assert f[116] == 1 and u(f, 120, 8) == 0x64 and f[128] == 0xFE  # reset: port 0x64 <- 0xFE
    assert f[148] == 1 and u(f, 152, 8) == 0x600 and f[172] == 1 and u(f, 176, 8) == 0x604


def test_madt_entries() -> None:
    m = build_madt(cpus(2))
    assert m[:4] == b"APIC" and u(m, 4, 4) == len(m) and sums_to_zero(m)
    assert u(m, 36, 4) == 0xFEE00000 and u(m, 40, 4) == 1
    entries, pos = [], 44
    while pos < len(m):
        entries.append(m[pos : pos + m[pos + 1]])
        pos += m[pos + 1]
    assert pos == len(m)
    assert [e[0] for e in entries] == [0, 0, 1, 2, 2, 4]
    assert [(e[2], e[3], u(e, 4, 4)) for e in entries[:2]] == [(0, 0, 1), (1, 1, 1)]
    io = entries[2]
    assert io[2] == 2 and u(io, 4, 4) == 0xFEC00000 and u(io, 8, 4) == 0
    assert (entries[3][3], u(entries[3], 4, 4), u(entries[3], 8, 2)) == (0, 2, 0)  # IRQ0 -> GSI2
    assert (entries[4][3], u(entries[4], 4, 4), u(entries[4], 8, 2)) == (9, 9, 0x000D)  # SCI level high
    assert (entries[5][2], u(entries[5], 3, 2), entries[5][5]) == (0xFF, 0, 1)  # NMI on LINT1


def test_madt_disabled_cpu() -> None:
    m = build_madt([CpuEntry(0, bsp=True), CpuEntry(1, enabled=False)])
    assert u(m, 44 + 8 + 4, 4) == 0


def test_mcfg() -> None:
    m = build_mcfg()
    assert len(m) == 60 and m[8] == 1 and sums_to_zero(m)
    assert struct.unpack_from("<QHBB", m, 44) == (0xC1000000, 0, 0, 15)


def test_dsdt_contains_host_bridge_prt_and_s5() -> None:
    d = build_dsdt(IRQS)
    assert d[:4] == b"DSDT" and d[8] == 2 and sums_to_zero(d) and u(d, 4, 4) == len(d)
    body = d[36:]
    assert body.startswith(b"\x10") and b"\\_SB_" in body[:8]
    assert b"PCI0" in body and aml.eisa_id("PNP0A03") in body
    assert b"_PRT" in body and aml.integer(0x0001FFFF) in body and aml.integer(0x0003FFFF) in body
    assert b"_S5_" in body and b"PNP" not in body  # EISA ids are compressed
    assert aml.memory32_fixed(0xC1000000, 0x1000000) in body
    assert aml.memory32_fixed(0xC1000000, 0x1000000) not in build_dsdt(IRQS, reserve_ecam=False)


def test_dsdt_declares_the_demo_ports_as_motherboard_resources() -> None:
    assert aml.io_port(0x6060, 16) == bytes([0x47, 1, 0x60, 0x60, 0x60, 0x60, 1, 16])  # ACPI 6.4 §6.4.2.5
    plain = build_dsdt(IRQS)
    d = build_dsdt(IRQS, reserved_io=[(0x6020, 16), (0x8900, 1)])
    assert sums_to_zero(d) and u(d, 4, 4) == len(d)
    assert b"DEMO" in d and b"DEMO" not in plain
    assert aml.io_port(0x6020, 16) + aml.io_port(0x8900, 1) + b"\x79\x00" in d
    assert d.count(aml.eisa_id("PNP0C02")) == 2
    with pytest.raises(ValueError):
        aml.io_port(0xFFFF, 2)


def test_platform_declares_exactly_the_ports_no_linux_driver_claims() -> None:
    from broiler.core.memory import MiB
    from broiler.vmm.machine import MachineConfig
    from broiler.vmm.platform import PlatformSketch, firmware_declared_ports

    sketch = PlatformSketch(MachineConfig(mem_size=64 * MiB))
    assert firmware_declared_ports(sketch.pio_bus) == [
        (0x6020, 16),
        (0x6040, 16),
        (0x6060, 16),
        (0x60A0, 16),
        (0x8900, 1),
    ]


def test_checksum_helper() -> None:
    data = bytearray(b"abc\0")
    data[3] = checksum(data)
    assert sums_to_zero(data)


# --- AML encoding -------------------------------------------------------------------------------


def test_aml_integers() -> None:
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(5) == b"\x0a\x05" and aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0x0001FFFF) == b"\x0c\xff\xff\x01\x00"
    assert aml.integer(1 << 40) == b"\x0e" + (1 << 40).to_bytes(8, "little")


def test_aml_pkg_length() -> None:
    assert aml.pkg_length(0x3E) == b"\x3f"  # 1-byte form up to 63
    enc = aml.pkg_length(0x3F)  # total 0x41 -> 2-byte form
    assert enc == bytes([0x40 | 0x1, 0x04])
    enc = aml.pkg_length(0x1000)  # total 0x1003 -> 3-byte form
    assert enc[0] >> 6 == 2 and (enc[0] & 0xF) | (enc[1] << 4) | (enc[2] << 12) == 0x1003


def test_aml_eisa_id_and_names() -> None:
    assert aml.eisa_id("PNP0A03") == b"\x0c" + (0x030AD041).to_bytes(4, "little")
    assert aml.eisa_id("PNP0C02") == b"\x0c" + (0x020CD041).to_bytes(4, "little")
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    with pytest.raises(ValueError):
        aml.name_seg("pci0")


def test_aml_package_and_device() -> None:
    assert aml.package(aml.integer(5), aml.integer(0)) == b"\x12\x05\x02\x0a\x05\x00"
    dev = aml.device("PCI0", aml.name("_UID", aml.integer(0)))
    assert dev == b"\x5b\x82\x0b" + b"PCI0" + b"\x08_UID\x00"


def test_resource_template_end_tag() -> None:
    rt = aml.resource_template(aml.word_io(0, 0xCF7))
    assert rt[0] == 0x11 and rt.endswith(b"\x79\x00")
    assert aml.word_io(0, 0xCF7)[0] == 0x88 and len(aml.word_io(0, 0xCF7)) == 16
    assert len(aml.dword_memory(0xC2000000, 0xCFFFFFFF)) == 26


def test_hpet_table_and_dsdt_device_only_with_the_hpet() -> None:
    without = build_acpi(cpus(1), [], BASE_ACPI)
    assert "HPET" not in without.addresses and b"PNP0103" not in without.blob
    t = build_acpi(cpus(1), [], BASE_ACPI, hpet=True)
    hpet = table_at(t.blob, t.addresses["HPET"])
    assert hpet[:4] == b"HPET" and len(hpet) == 56 and sums_to_zero(hpet)
    assert u(hpet, 36, 4) == 0x8086A201  # the capabilities register's low half, as QEMU's
    assert hpet[40] == 0 and u(hpet, 44, 8) == 0xFED0_0000  # memory space, the block's base
    assert (hpet[52], u(hpet, 53, 2), hpet[55]) == (0, 0, 0)  # QEMU's number, minimum tick, protection
    rsdt = table_at(t.blob, t.addresses["RSDT"])
    assert t.addresses["HPET"] in struct.unpack_from("<4I", rsdt, 36)
    dsdt = table_at(t.blob, t.addresses["DSDT"])
    assert sums_to_zero(dsdt) and b"HPET" in dsdt
    # _HID PNP0103 as a compressed EISA id (0x0301D041), and the 1 KiB block in a Memory32Fixed
    assert struct.pack("<I", 0x0301D041) in dsdt and struct.pack("<BHBII", 0x86, 9, 1, 0xFED0_0000, 0x400) in dsdt
