"""Issue 7: the control socket (list/stat/stop/regs), tracing and --stats-json against real guests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broiler import exitcodes
from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli, cli_in

pytestmark = pytest.mark.kvm


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broiler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_listed(name: str, env: dict[str, str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-m", "broiler", "list"], capture_output=True, text=True, env=env, cwd=ROOT
        ).stdout
        if name in out:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never showed up in `broiler list`")


def test_list_stat_regs_stop_on_a_running_demo(env: dict[str, str], tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    vm = _spawn("run", "--name", "ctl-test", "--async-delay", "3", "--stats-json", str(stats_file), env=env)
    try:
        _wait_listed("ctl-test", env)
        second = cli_in(env, "run", "--name", "ctl-test", "--timeout", "5")
        assert second.returncode == exitcodes.USAGE and "already running" in second.stderr
        stat = cli_in(env, "stat", "ctl-test", "--once")
        assert stat.returncode == 0, stat.stderr
        assert "sync-pio" in stat.stdout and "p99" in stat.stdout
        regs = cli_in(env, "regs", "ctl-test")
        assert regs.returncode == 0, regs.stderr
        assert "rip=" in regs.stdout and "instruction:" in regs.stdout
        stop = cli_in(env, "stop", "ctl-test")
        assert stop.returncode == 0
        vm.wait(timeout=30)
    finally:
        vm.kill()
    assert vm.returncode == exitcodes.INTERRUPTED
    assert "no running VMs" in cli_in(env, "list").stdout  # its socket went with it
    data = json.loads(stats_file.read_text())
    sync = next(d for d in data["devices"] if d["device"] == "sync-pio")
    assert (sync["reads"], sync["writes"]) == (5, 2)  # exactly what the demo guest did


def test_stat_of_unknown_and_stale_vms(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli_in(env, "stat", "nope", "--once")
    assert proc.returncode == exitcodes.USAGE and "no running VM named 'nope'" in proc.stderr
    stale = tmp_path / "broiler" / "ghost.sock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: a stale socket
    proc = cli_in(env, "stat", "ghost", "--once")
    assert proc.returncode == exitcodes.USAGE and "gone" in proc.stderr
    assert not stale.exists()


def test_trace_lines_match_the_guest_accesses(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    proc = broiler_cli(
        "run",
        "--trace",
        "pio,mmio,doorbell,coalesced,irq",
        "--trace-json",
        "--trace-file",
        str(trace),
        "--timeout",
        "60",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    sync_mmio = [
        (e["rw"], e["addr"], e["size"], e["value"])
        for e in events
        if e["path"] == "mmio" and e["device"] == "sync-mmio"
    ]
    assert sync_mmio == [
        ("r", 0xD000_0000, 4, 0x20),
        ("w", 0xD000_0004, 4, 3),
        ("r", 0xD000_0004, 4, 3),
        ("r", 0xD000_0008, 4, 0x10),
        ("r", 0xD000_000C, 4, 0x40),
        ("r", 0xD000_0000, 1, 0xFF),
    ]
    doorbells = [e for e in events if e["path"] == "doorbell"]
    assert sum(1 for e in doorbells if "async-pio" in e["device"]) == 2
    coalesced = [e["value"] for e in events if e["path"] == "coalesced"]
    assert coalesced == [i * i for i in range(1, 17)]
    assert any(e["path"] == "irq" and e["device"] == "line raised" for e in events)


def test_bad_trace_kind() -> None:
    proc = broiler_cli("run", "--trace", "pio,bogus")
    assert proc.returncode == exitcodes.USAGE and "bogus" in proc.stderr
