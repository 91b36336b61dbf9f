"""Issue 14: broiler's virtio-blk, driven by the same guest kernel that tests/kvm/test_virtio_guest_qemu.py
validates against QEMU.

Written ahead of the device: on a tree whose `broiler run --help` does not mention --disk and
--virtio-transport (broiler/devices/virtio/), every test here skips with that reason. The interface it uses:

    broiler run -k broiler/guests/virtio_blk_test.elf --disk IMG,serial=ID[,ro=on] \\
                --virtio-transport modern|legacy|transitional -p '<guest words>'

and it checks what the QEMU test checks: the guest passes (status 1), the image holds exactly the pattern
afterwards, and a read-only image's hash is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kvm.helpers import broiler_cli
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

pytestmark = pytest.mark.kvm


def run_broiler(disk: Path, device: str, cmdline: str, *, ro: bool = False) -> tuple[str, int]:
    proc = broiler_cli(
        "run",
        *("-k", str(KERNEL), "--timeout", "120"),
        *("--disk", f"{disk},serial={SERIAL}{',ro=on' if ro else ''}", "--virtio-transport", device),
        *("-p", cmdline),
        timeout=180,
    )
    return proc.stdout + proc.stderr, proc.returncode


@pytest.mark.parametrize(
    "device, transport, irq",
    [
        ("modern", "modern", "msix"),
        ("modern", "modern", "intx"),
        ("modern", "modern", "poll"),
        ("legacy", "legacy", "msix"),
        ("legacy", "legacy", "intx"),
        ("transitional", "modern", "intx"),
        ("transitional", "legacy", "msix"),
    ],
    ids=[
        "modern-msix",
        "modern-intx",
        "modern-poll",
        "legacy-msix",
        "legacy-intx",
        "transitional-modern-intx",
        "transitional-legacy-msix",
    ],
)
def test_guest_writes_the_pattern_through_broiler(tmp_path: Path, device: str, transport: str, irq: str) -> None:
    disk = make_disk(tmp_path / "disk.img", prefilled=False)
    output, status = run_broiler(disk, device, guest_cmdline(transport, irq, ro=False))
    assert_guest_passed(output, status, transport=transport, irq=irq)
    assert disk.read_bytes() == expected_image(), "the image differs from the pattern the guest should write"


@pytest.mark.parametrize(
    "device, transport, irq", [("modern", "modern", "msix"), ("legacy", "legacy", "intx")], ids=["modern", "legacy"]
)
def test_read_only_disk_reads_and_refuses_writes(tmp_path: Path, device: str, transport: str, irq: str) -> None:
    disk = make_disk(tmp_path / "disk.img", prefilled=True)
    before = sha256(disk)
    output, status = run_broiler(disk, device, guest_cmdline(transport, irq, ro=True), ro=True)
    assert_guest_passed(output, status, transport=transport, irq=irq)
    assert "write-ro: sector=0 len=512 status=1" in output, output[-4000:]
    assert sha256(disk) == before


def test_bench_kernel_prints_every_test_under_broiler(tmp_path: Path) -> None:
    disk = tmp_path / "scratch.img"
    disk.write_bytes(bytes(BENCH_DISK_SECTORS * 512))
    proc = broiler_cli(
        "run",
        *("-k", str(BENCH_KERNEL), "--timeout", "120", "--disk", str(disk), "--virtio-transport", "modern"),
        *("-p", "requests=64 ms=20000"),
        timeout=180,
    )
    assert_bench_passed(proc.stdout + proc.stderr, proc.returncode, disk)
