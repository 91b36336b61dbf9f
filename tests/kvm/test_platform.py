"""Issue 17, platform items: a Multiboot kernel linked below 1 MiB on broiler's old boot-information page,
and guests/multiboot/mbplat.c (ACPI tables, the PM timer, config reads with latch low bits) -- under
broiler and, where installed, under QEMU (the reference)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli

pytestmark = pytest.mark.kvm

MBPLAT = ROOT / "broiler" / "guests" / "mbplat.elf"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

LOW_BASE, LOW_FILE_END, LOW_BSS_END = 0x8000, 0xA000, 0xA86C  # the segment: 0x8000-0xA86C
MARKER = 0x5AFE_C0DE
PASSED, FAILED = 0x21, 0x33  # written to isa-debug-exit: status (v << 1) | 1


def low_kernel() -> bytes:
    """An a.out-kludge kernel loaded at 0x8000-0xA86C (file part up to 0xA000) with MARKER at 0x9000 and
    0x9500, where broiler used to put the memory map and the information block. It checks EAX and that
    both markers survived loading, then writes PASSED or FAILED to port 0xF4."""
    entry = LOW_BASE + 0x20
    magic, flags = 0x1BADB002, 1 << 16
    header = struct.pack(
        "<8I", magic, flags, (-(magic + flags)) & 0xFFFF_FFFF, LOW_BASE, LOW_BASE, LOW_FILE_END, LOW_BSS_END, entry
    )
    code = bytearray(b"\x3d" + struct.pack("<I", 0x2BADB002))  # cmp eax, 0x2BADB002
    code += b"\x75\x00"  # jne fail (patched below)
    jumps = [len(code) - 1]
    for where in (0x9000, 0x9500):
        code += b"\x81\x3d" + struct.pack("<II", where, MARKER)  # cmp dword [where], MARKER
        code += b"\x75\x00"
        jumps.append(len(code) - 1)
    code += bytes([0xB0, PASSED, 0xE6, 0xF4, 0xF4])  # mov al, PASSED; out 0xf4, al; hlt
    fail = len(code)
    code += bytes([0xB0, FAILED, 0xE6, 0xF4, 0xF4])
    for at in jumps:
        code[at] = fail - (at + 1)
    image = bytearray(LOW_FILE_END - LOW_BASE)
    image[: len(header)] = header
    image[0x20 : 0x20 + len(code)] = code
    for where in (0x9000, 0x9500):
        struct.pack_into("<I", image, where - LOW_BASE, MARKER)
    return bytes(image)


def qemu(kernel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none"]
    base += ["-serial", "stdio", "-no-reboot", "-nic", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
    return subprocess.run([*base, "-kernel", str(kernel), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def low(tmp_path: Path) -> Path:
    path = tmp_path / "low.bin"
    path.write_bytes(low_kernel())
    return path


def test_a_kernel_linked_at_0x8000_loads_and_runs(low: Path) -> None:
    proc = broiler_cli("run", "-k", str(low), "--timeout", "30")
    assert proc.returncode == PASSED << 1 | 1, proc.stdout + proc.stderr


@needs_qemu
def test_the_low_kernel_runs_under_qemu_too(low: Path) -> None:
    proc = qemu(low)
    assert proc.returncode == PASSED << 1 | 1, proc.stdout + proc.stderr


def assert_mbplat_passed(proc: subprocess.CompletedProcess[str]) -> None:
    assert "mbplat: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1  # debug-exit value 0: every check passed


def test_mbplat_passes_under_broiler() -> None:
    proc = broiler_cli("run", "-k", str(MBPLAT), "-c", "2", "--timeout", "60")
    assert_mbplat_passed(proc)
    assert "acpi: pm_tmr=0x608" in proc.stdout and "acpi: madt_cpus=2" in proc.stdout
    assert "acpi: rsdp=0xf1000" in proc.stdout and "acpi: table MCFG" in proc.stdout


@needs_qemu
def test_mbplat_passes_under_qemu() -> None:
    assert_mbplat_passed(qemu(MBPLAT))


MBHPET = ROOT / "broiler" / "guests" / "mbhpet.elf"


def assert_mbhpet_passed(proc: subprocess.CompletedProcess[str]) -> None:
    assert "mbhpet: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1  # debug-exit value 0: every check passed


def test_mbhpet_passes_under_broiler() -> None:
    proc = broiler_cli("run", "-k", str(MBHPET), "--timeout", "60")
    assert_mbhpet_passed(proc)
    assert "routed level one-shot on IOAPIC pin 23" in proc.stdout  # broiler offers q35's INT_ROUTE_CAP


def test_without_the_hpet_mbhpet_finds_no_table() -> None:
    proc = broiler_cli("run", "-k", str(MBHPET), "--hpet", "off", "--timeout", "60")
    assert "FAIL 2 RSDT lists an HPET table" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 2 << 1 | 1


@needs_qemu
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_mbhpet_passes_under_qemu(machine: str) -> None:
    assert_mbhpet_passed(qemu(MBHPET, "-M", machine))
