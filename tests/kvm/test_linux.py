"""Issue 6: a real Debian kernel boots under broiler and reports the seed's memory map.

Needs the Debian 12 cloud kernel and busybox in the cache `tools/fetch-debian-kernel` fills
(~/.cache/broiler/linux, or $BROILER_LINUX_CACHE); .ci/run fetches them. Without them the tests skip
and say how to get them. On this host (KVM-PVM) the kernel runs in KVM's instruction emulator: the
first two tests stop the VM once the kernel has printed what they check; the third boots into user
space (busybox /init, its system calls completed by broiler's syscall assist) and takes ~15 minutes
here (docs/linux.md §8).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.boot.linux.initramfs import build_probe_initramfs
from tests.conftest import ROOT

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

CACHE = Path(os.environ.get("BROILER_LINUX_CACHE", Path.home() / ".cache" / "broiler" / "linux"))
WANT = [
    "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
    "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable",
    "ACPI: MCFG",
    "[mem 0xc0000000-0xffffffff] available for PCI devices",
]


def _section(text: str, name: str) -> list[str]:
    """The lines the probe /init printed after "=== broiler: <name>" up to the next marker."""
    lines = text.splitlines()
    start = lines.index(f"=== broiler: {name}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("=== broiler:"))
    return lines[start:end]


def _cloud_kernel() -> Path:
    kernels = sorted(CACHE.glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        pytest.skip(f"no Debian cloud kernel in {CACHE}: run tools/fetch-debian-kernel --flavour cloud-amd64")
    return kernels[-1]


def _boot_until(
    tmp_path: Path, want: list[str], *args: str, limit: float = 900, kernel: Path | None = None
) -> tuple[str, str, int]:
    """Boot the cloud kernel until every line of ``want`` was printed (or ``limit`` s), then SIGTERM."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broiler",
            "run",
            "-k",
            str(kernel or _cloud_kernel()),
            "-m",
            "4G",
            "--console",
            "none",
            "--timeout",
            str(int(limit)),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
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


def test_debian_user_space_sees_the_seed_memory_map(tmp_path: Path) -> None:
    """The probe /init runs in user mode and prints /proc/iomem, /proc/ioports and the PCI functions."""
    busybox = CACHE / "busybox"
    kernel = _cloud_kernel()
    if not busybox.exists():
        pytest.skip(f"no busybox in {CACHE}: run tools/fetch-debian-kernel")
    initramfs = tmp_path / "initramfs.cpio"  # always today's /init script, whatever the cache holds
    initramfs.write_bytes(build_probe_initramfs(busybox.read_bytes()))
    stats = tmp_path / "stats.json"
    text, err, status = _boot_until(
        tmp_path, ["=== broiler: done"], "-i", str(initramfs), "--stats-json", str(stats), limit=2700, kernel=kernel
    )
    assert "=== broiler: done" in text, f"the probe did not finish; stderr: {err}"

    iomem = _section(text, "/proc/iomem")
    assert "00100000-bfffffff : System RAM" in iomem
    assert "100000000-13fffffff : System RAM" in iomem
    top = [line for line in iomem if not line.startswith(" ")]
    in_hole = [line for line in top if 0xC0000000 <= int(line.split("-")[0], 16) < 0x100000000]
    assert in_hole and not any("System RAM" in line or "Reserved" in line for line in in_hole), in_hole
    assert "c2000000-cfffffff : PCI Bus 0000:00" in in_hole  # PCI MMIO from 0xC2000000
    assert "fee00000-fee00fff : Local APIC" in in_hole

    ioports = [line.strip() for line in _section(text, "/proc/ioports")]
    assert "03f8-03ff : serial" in ioports
    for port in ("6020-602f", "6040-604f", "6060-606f", "60a0-60af", "8900-8900"):  # the demo ports
        assert any(line.startswith(f"{port} : pnp 00:") for line in ioports), (port, ioports)

    pci = _section(text, "pci devices")
    assert pci[0] == "0000:00:00.0 0x1b36 0x0008 0x060000" and len(pci) == 13, pci
    assert "=== broiler: cpus 1" in text
    final = json.loads(stats.read_text())
    decision = final["decisions"]["syscall_assist"]
    assert decision["mode"] == "auto" and decision["reason"].startswith("auto: "), decision
    emulated = final["emulated_in_userspace"]["0"]
    if decision["enabled"]:  # every system call of /init went through the syscall assist
        assert emulated.get("syscall", 0) > 100, emulated
    else:
        assert emulated.get("syscall", 0) == 0, emulated
