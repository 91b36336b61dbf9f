"""Run packaged guests in-process and hand back what they did."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from broiler.core.memory import MiB
from broiler.guests import packaged_guest
from broiler.vmm.machine import Machine, MachineConfig
from tests.conftest import ROOT


@dataclass
class GuestRun:
    status: int
    output: str
    machine: Machine


def run_guest(name: str, *, timeout: float = 60, mem: int = 64 * MiB, **config: object) -> GuestRun:
    out: list[bytes] = []
    # Closed before it is returned: the test reads what the run left (counters, devices, memory), never KVM.
    with Machine(MachineConfig(mem_size=mem, serial_output=out.append, **config)) as machine:  # type: ignore[arg-type]
        machine.load_flat64(packaged_guest(name))
        status = machine.run(timeout=timeout)
    return GuestRun(status, b"".join(out).decode(errors="replace"), machine)


def broiler_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli_in(dict(os.environ, PYTHONPATH=str(ROOT)), *args, timeout=timeout)


def cli_env(runtime_dir: Path) -> dict[str, str]:
    """The environment of a `broiler` child that runs this checkout with its control sockets in runtime_dir,
    so `broiler list/stop/snapshot` see only the test's own VMs."""
    return dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime_dir))


def cli_in(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`broiler ARGS` run to its end with env (see cli_env), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "broiler", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def passed(status: int) -> bool:
    """flat64 test guests return their failure count through debug exit: 0 → status 1."""
    return status == 1
