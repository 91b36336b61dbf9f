"""Issue 17, S3: guests/multiboot/mbs3.c suspends through PM1a_CNT and resumes through the FACS waking vector
-- woken by the RTC alarm it armed, or (with "noalarm") by `broiler wakeup NAME` -- under broiler and, where
installed, under QEMU's pc machine with SeaBIOS (the reference)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broiler.vmm import recording as rec
from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli, cli_env, cli_in

pytestmark = pytest.mark.kvm

MBS3 = ROOT / "broiler" / "guests" / "mbs3.elf"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


def assert_mbs3_passed(proc: subprocess.CompletedProcess[str]) -> None:
    assert "mbs3: resumed" in proc.stdout and "mbs3: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1  # debug-exit value 0: every check passed


@pytest.mark.parametrize("cpus", ["1", "2"])
def test_mbs3_sleeps_and_the_rtc_alarm_wakes_it(cpus: str) -> None:
    """With 2 vCPUs the AP (never started) is parked with the BSP and put back to wait-for-SIPI."""
    proc = broiler_cli("run", "-k", str(MBS3), "-c", cpus, "--timeout", "60")
    assert_mbs3_passed(proc)
    assert "ok 11 WAK_STS (and RTC_STS for the alarm) in PM1a_STS" in proc.stdout
    assert "s3: rtc_reg_c=0x0" in proc.stdout and "s3: rtc_reg_b=0x2" in proc.stdout  # reset as QEMU's reset


def test_an_alarm_armed_as_kvm_unit_tests_does_wakes_it_too() -> None:
    """ "kut": every alarm field don't care, PM1a_EN never written (QEMU sleeps on until system_wakeup)."""
    proc = broiler_cli("run", "-k", str(MBS3), "-p", "kut", "--timeout", "60")
    assert_mbs3_passed(proc)


@needs_qemu
def test_mbs3_passes_under_qemu_pc() -> None:
    base = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "qemu64", "-M", "pc", "-m", "128", "-display", "none"]
    base += ["-serial", "stdio", "-no-reboot", "-nic", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
    proc = subprocess.run([*base, "-kernel", str(MBS3)], capture_output=True, text=True, timeout=120)
    assert_mbs3_passed(proc)


def _until(what: str, ok: object, vm: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline and vm.poll() is None, f"never: {what}"
        time.sleep(0.2)


def test_a_guest_that_armed_nothing_sleeps_until_broiler_wakeup(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    recording = tmp_path / "s3.rec"  # the wake by command is a recorded cause: replay resets where it woke
    run = [sys.executable, "-m", "broiler", "run", "-k", str(MBS3), "--append", "noalarm", "--name", "s3vm"]
    run += ["--record", str(recording)]
    vm = subprocess.Popen([*run, "--timeout", "120"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        _until("suspended in `broiler list`", lambda: "suspended since" in cli_in(env, "list").stdout, vm)
        assert "suspended since" in cli_in(env, "stat", "s3vm", "--once").stdout
        resumed = cli_in(env, "resume", "s3vm")  # a suspended guest comes back only through its waking vector
        assert resumed.returncode == 0 and "s3vm is not paused (suspended since" in resumed.stdout
        refused = cli_in(env, "snapshot", "s3vm", str(tmp_path / "asleep.snap"))  # the wake is not in a state
        assert refused.returncode == 2 and "suspended (S3): wake it first" in refused.stderr, refused.stderr
        assert not (tmp_path / "asleep.snap").exists()
        time.sleep(1.5)  # nothing armed: still asleep (an alarm, had one been set, would have fired by now)
        assert "suspended since" in cli_in(env, "list").stdout
        woke = cli_in(env, "wakeup", "s3vm")
        assert woke.returncode == 0 and woke.stdout.strip() == "woke s3vm", woke.stdout + woke.stderr
        out, _ = vm.communicate(timeout=60)
    finally:
        vm.kill()
        vm.wait()
    assert "mbs3: PASSED" in out and "ok 11 WAK_STS" in out, out
    assert vm.returncode == 1
    replay = broiler_cli("replay", str(recording))
    assert replay.returncode == 0 and replay.stdout.rstrip().endswith("no divergence"), replay.stdout + replay.stderr
    with open(recording, "rb") as f:
        rec.read_header(f, str(recording))
        assert [e.value for e in rec.read_events(f, str(recording)) if e.kind == rec.S3_WAKE] == [0]  # not by RTC
