"""The self-timed bench guest (broiler/guests/io_bench.elf) under broiler and under QEMU with a tiny N: every path
prints its batches, the ioeventfd writes never reach pci-testdev, and the numbers are sane (never the timings
themselves: a sync exit costs more than an iteration of the bare loop, and the guest's PIT-measured TSC rate is
near the one KVM reports). Also `broiler bench` with and without its QEMU column."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from broiler.bench import qemu_io
from broiler.bench.qemu import broiler_command, find_qboot, qemu_command, run_vmm
from broiler.frontend import cli

pytestmark = pytest.mark.kvm

# ΔN = 1000 sync exits is ~10 ms here: a scheduler slice stolen from one batch cannot flip its sign often.
N1, N2, REPS = 50, 1050, 5
SYNC = ("pio_out", "pio_in", "mmio_write", "mmio_read")


def tiny_cmdline() -> str:
    return qemu_io.guest_cmdline(N1, N2, list(qemu_io.SELF_TIMED_PATHS)).replace("reps=1", f"reps={REPS}")


def check_sane(run: qemu_io.SelfTimedRun) -> None:
    assert run.problem is None, run.problem
    assert sorted(run.ticks_per_op) == sorted(qemu_io.SELF_TIMED_PATHS)
    # Medians: on a shared host a vCPU preempted during the short batch of one repetition can make that
    # repetition's ΔN small or even negative; the median of five shrugs off one or two such repetitions.
    median = {path: statistics.median(values) for path, values in run.ticks_per_op.items()}
    for path, values in run.ticks_per_op.items():
        assert len(values) == REPS and median[path] > 0, (path, values)
    for path in SYNC:
        assert median[path] > median["loop"], (path, run.ticks_per_op)
    khz = qemu_io.host_tsc_khz()
    assert khz is not None and run.guest_tsc_hz is not None
    assert abs(run.guest_tsc_hz / 1000 / khz - 1) < 0.25, (run.guest_tsc_hz, khz)


def test_the_guest_times_every_path_under_broiler() -> None:
    cmd = broiler_command(qemu_io.KERNEL, tiny_cmdline(), 60, extra=qemu_io.BROILER_ARGS)
    result = run_vmm(cmd, 120)
    check_sane(qemu_io.parse_output("broiler_st", result.text, result.status))
    assert "device_count=0" in result.text and "bars=firmware" in result.text  # broiler assigns BARs itself


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
@pytest.mark.parametrize("firmware", ["seabios", "qboot"])
def test_the_same_guest_times_every_path_under_qemu(firmware: str) -> None:
    """SeaBIOS assigns pci-testdev's BARs; qboot (what the bench uses where installed) leaves them to the kernel."""
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    extra: list[str] = []
    if firmware == "qboot":
        qboot = find_qboot(qemu)
        if qboot is None:
            pytest.skip("QEMU's qboot.rom is not installed")
        extra = ["-bios", str(qboot)]
    cmd = qemu_command(qemu, qemu_io.KERNEL, tiny_cmdline(), devices=qemu_io.QEMU_DEVICES, extra=extra)
    result = run_vmm(cmd, 120)
    check_sane(qemu_io.parse_output("qemu", result.text, result.status))
    assert f"bars={'guest' if firmware == 'qboot' else 'firmware'}" in result.text


def bench_doc(tmp_path: Path, *extra: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--reps", "1", "--paths", "loop,pio_out,coalesced_mmio", "--no-scaling"]
    assert cli.main([*args, "--no-startup", "--json", str(out), *extra]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "broiler-bench/2"
    return doc


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
def test_bench_fills_the_qemu_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = bench_doc(tmp_path)
    text = capsys.readouterr().out
    assert "QEMU self-timed (e)" in text and "broiler / QEMU (c′/e): loop" in text
    rows = {row["key"]: row for row in doc["paths"]}  # type: ignore[attr-defined]
    for key in ("loop", "pio_out"):
        # one quick repetition: a number in each cell (its sanity is the two tests above), never a timing
        assert len(rows[key]["qemu"]["samples_us"]) == 1 and len(rows[key]["broiler_st"]["samples_us"]) == 1
        assert rows[key]["cst_over_e"] is not None
    assert rows["coalesced_mmio"]["missing"]["qemu"] == qemu_io.NO_EQUIVALENT
    section = doc["qemu"]
    assert isinstance(section, dict) and section["problems"] == {"broiler_st": [], "qemu": []}


def test_no_qemu_runs_without_the_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = bench_doc(tmp_path, "--no-qemu")
    assert doc["qemu"] is None
    assert "QEMU" not in capsys.readouterr().out
    assert all(row["qemu"] is None for row in doc["paths"])  # type: ignore[attr-defined]
