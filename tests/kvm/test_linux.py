"""Issue 6: a real Debian kernel boots under broiler and reports the seed's memory map.

Needs the Debian 12 cloud kernel in the cache `tools/fetch-debian-kernel` fills
(~/.cache/broiler/linux, or $BROILER_LINUX_CACHE); .ci/run fetches it. Without it the test skips
and says how to get it. On this host (KVM-PVM) the kernel runs in KVM's instruction emulator, so
the test stops the VM once the kernel has printed what it checks (about a minute of guest time)
instead of waiting for user space, which PVM cannot run (see docs/linux.md).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broiler import exitcodes

from ..conftest import ROOT

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

CACHE = Path(os.environ.get("BROILER_LINUX_CACHE", Path.home() / ".cache" / "broiler" / "linux"))
WANT = [
    "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
    "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable",
    "ACPI: MCFG",
    "[mem 0xc0000000-0xffffffff] available for PCI devices",
]


def _cloud_kernel() -> Path:
    kernels = sorted(CACHE.glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        pytest.skip(f"no Debian cloud kernel in {CACHE}: run tools/fetch-debian-kernel --flavour cloud-amd64")
    return kernels[-1]


def _boot_until(tmp_path: Path, want: list[str], *args: str, limit: float = 900) -> tuple[str, str, int]:
    """Boot the cloud kernel until every line of ``want`` was printed (or ``limit`` s), then SIGTERM."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "broiler", "run", "-k", str(_cloud_kernel()), "-m", "4G",
                             "--console", "none", "--timeout", str(int(limit)), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = b""
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline and not all(w.encode() in out for w in want):
            if not sel.select(timeout=5):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    return out.decode(errors="replace"), err.decode(errors="replace")[-2000:], proc.returncode


def test_debian_kernel_sees_the_seed_memory_map(tmp_path: Path) -> None:
    text, err, status = _boot_until(tmp_path, WANT)
    for want in WANT:
        assert want in text, f"missing {want!r}; stderr: {err}"
    # Between the two RAM ranges nothing but reserved firmware areas and devices.
    e820 = [line for line in text.splitlines() if "BIOS-e820" in line]
    assert not any("0x00000000c" in line and "usable" in line for line in e820)
    assert status == exitcodes.INTERRUPTED, err


def test_debian_kernel_brings_up_two_cpus(tmp_path: Path) -> None:
    """-c 2: the AP is started by the guest (INIT/SIPI through the in-kernel LAPIC). ~4 min here."""
    want = ["smpboot: Allowing 2 CPUs", "smp: Brought up 1 node, 2 CPUs"]
    text, err, status = _boot_until(tmp_path, want, "-c", "2")
    for line in want:
        assert line in text, f"missing {line!r}; stderr: {err}"
    assert status == exitcodes.INTERRUPTED, err
