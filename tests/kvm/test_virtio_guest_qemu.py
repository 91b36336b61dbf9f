"""Issue 14: the guest side of virtio-blk, validated against QEMU (the reference device) before broiler has
one. broiler/guests/virtio_blk_test.elf drives QEMU's virtio-blk-pci over each transport (modern-only,
legacy-only, transitional) and each interrupt kind (MSI-X, INTx, polling), and the host then checks the
bytes the guest left on the image; a read-only drive must come back unchanged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kvm.virtio_blk_disk import (
    BENCH_DISK_SECTORS,
    BENCH_KERNEL,
    KERNEL,
    SERIAL,
    assert_bench_passed,
    assert_guest_passed,
    expected_image,
    guest_cmdline,
    make_disk,
    sha256,
)

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]

# QEMU device flavours: modern-only (1af4:1042), legacy-only and transitional (1af4:1001, subsystem 2).
MODERN_ONLY = ",disable-legacy=on"
LEGACY_ONLY = ",disable-modern=on"
TRANSITIONAL = ""


def run_qemu(disk: Path, device: str, cmdline: str, *, readonly: bool = False) -> subprocess.CompletedProcess[str]:
    drive = f"file={disk},if=none,format=raw,id=d0,cache=none" + (",readonly=on" if readonly else "")
    return subprocess.run(
        [
            "qemu-system-x86_64",
            *("-accel", "kvm", "-cpu", "qemu64", "-M", "pc", "-m", "128M"),
            *("-display", "none", "-serial", "stdio", "-no-reboot", "-nic", "none"),
            *("-device", "isa-debug-exit,iobase=0xf4,iosize=4"),
            *("-drive", drive, "-device", f"virtio-blk-pci,drive=d0,serial={SERIAL}{device}"),
            *("-kernel", str(KERNEL), "-append", cmdline),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "device, transport, irq",
    [
        (MODERN_ONLY, "modern", "msix"),
        (MODERN_ONLY, "modern", "intx"),
        (MODERN_ONLY, "modern", "poll"),
        (LEGACY_ONLY, "legacy", "msix"),
        (LEGACY_ONLY, "legacy", "intx"),
        (TRANSITIONAL, "modern", "intx"),
        (TRANSITIONAL, "legacy", "msix"),
        (TRANSITIONAL + ",vectors=0", "modern", "intx"),
    ],
    ids=[
        "modern-msix",
        "modern-intx",
        "modern-poll",
        "legacy-msix",
        "legacy-intx",
        "transitional-modern-intx",
        "transitional-legacy-msix",
        "transitional-no-msix-intx",
    ],
)
def test_guest_writes_the_pattern_through_qemu(tmp_path: Path, device: str, transport: str, irq: str) -> None:
    disk = make_disk(tmp_path / "disk.img", prefilled=False)
    proc = run_qemu(disk, device, guest_cmdline(transport, irq, ro=False))
    assert_guest_passed(proc.stdout, proc.returncode, transport=transport, irq=irq)
    assert disk.read_bytes() == expected_image(), "the image differs from the pattern the guest should write"


@pytest.mark.parametrize(
    "device, transport, irq",
    [(MODERN_ONLY, "modern", "msix"), (LEGACY_ONLY, "legacy", "intx")],
    ids=["modern", "legacy"],
)
def test_read_only_drive_reads_and_refuses_writes(tmp_path: Path, device: str, transport: str, irq: str) -> None:
    disk = make_disk(tmp_path / "disk.img", prefilled=True)
    before = sha256(disk)
    proc = run_qemu(disk, device, guest_cmdline(transport, irq, ro=True), readonly=True)
    assert_guest_passed(proc.stdout, proc.returncode, transport=transport, irq=irq)
    assert "write-ro: sector=0 len=512 status=1" in proc.stdout, proc.stdout[-4000:]
    assert sha256(disk) == before


def test_a_wrong_expectation_fails_with_its_check_number(tmp_path: Path) -> None:
    """The kernel's failures are real: a read-write drive with ro=1 ends at once with an odd status > 1."""
    disk = make_disk(tmp_path / "disk.img", prefilled=False)
    proc = run_qemu(disk, MODERN_ONLY, guest_cmdline("modern", "poll", ro=True))
    assert "FAIL" in proc.stdout and "PASSED" not in proc.stdout, proc.stdout[-4000:]
    assert proc.returncode > 1 and proc.returncode & 1
    assert disk.read_bytes() == bytes(len(expected_image()))


def test_bench_kernel_prints_every_test_under_qemu(tmp_path: Path) -> None:
    """virtio_blk_bench.elf: five parseable result lines, every request OK, status 1 (a fixed request count)."""
    disk = tmp_path / "scratch.img"
    disk.write_bytes(bytes(BENCH_DISK_SECTORS * 512))
    proc = subprocess.run(
        [
            "qemu-system-x86_64",
            *("-accel", "kvm", "-cpu", "qemu64", "-M", "pc", "-m", "128M"),
            *("-display", "none", "-serial", "stdio", "-no-reboot", "-nic", "none"),
            *("-device", "isa-debug-exit,iobase=0xf4,iosize=4"),
            *("-drive", f"file={disk},if=none,format=raw,id=d0,cache=none"),
            *("-device", "virtio-blk-pci,drive=d0,disable-legacy=on"),
            *("-kernel", str(BENCH_KERNEL), "-append", "requests=64 ms=20000"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_bench_passed(proc.stdout, proc.returncode, disk)
