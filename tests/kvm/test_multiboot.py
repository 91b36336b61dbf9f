"""Issue 5: QEMU-style Multiboot test kernels run unchanged, under broiler and (where installed) QEMU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from broiler import exitcodes

from ..conftest import ROOT
from .helpers import broiler_cli

pytestmark = pytest.mark.kvm

KERNEL = ROOT / "broiler" / "guests" / "mbtest.elf"
ENV = "GREETING=hello\nANSWER=42\n"


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "mbtest.env"
    path.write_text(ENV)
    return path


def test_mbtest_passes_under_broiler(module: Path) -> None:
    proc = broiler_cli("run", "-k", str(KERNEL), "-i", str(module), "--testdev", "--timeout", "60",
                       "-p", "expect_cpus=1 mods=1 expect_ram=128M irqs=24")
    assert "mbtest: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1  # debug exit value 0: every check passed
    assert "GREETING=hello" in proc.stdout and "ANSWER=42" in proc.stdout


def test_mbtest_sees_two_cpus_in_fw_cfg(module: Path) -> None:
    proc = broiler_cli("run", "-k", str(KERNEL), "-i", str(module), "--testdev", "-c", "2", "--timeout", "60",
                       "-p", "expect_cpus=2 mods=1")
    assert "mbtest: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1


def test_a_failed_check_is_the_exit_status(module: Path) -> None:
    proc = broiler_cli("run", "-k", str(KERNEL), "-i", str(module), "--testdev", "--timeout", "60",
                       "-p", "expect_cpus=3 mods=1")
    assert "mbtest: FAILED" in proc.stdout
    assert proc.returncode != 1 and proc.returncode & 1


@pytest.mark.parametrize("args, message", [
    (["-k", "/nonexistent"], "does not exist"),
    (["-k", str(ROOT / "broiler" / "guests" / "demo.bin")], "not a Multiboot"),
    (["--initrd", "x"], "go with --kernel"),
])
def test_bad_kernel_input(args: list[str], message: str) -> None:
    proc = broiler_cli("run", *args)
    assert proc.returncode == exitcodes.USAGE
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
def test_the_same_kernel_passes_under_qemu(module: Path) -> None:
    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none",
         "-serial", "stdio", "-no-reboot", "-device", "pc-testdev",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel", str(KERNEL), "-initrd", str(module),
         "-append", "expect_cpus=1 mods=1 expect_ram=128M"],
        capture_output=True, text=True, timeout=120)
    assert "mbtest: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1
