"""Issue 18: the Debian kernel booted once to the busybox shell, then restored from a snapshot in seconds.

Per vCPU count (1 and 2) the test boots the cloud kernel with the probe initramfs and `broiler.shell`,
waits for the shell, takes `broiler snapshot NAME FILE --stop` and keeps FILE in the kernel cache
(CACHE/snapshots), named by a hash of everything the snapshot depends on: the kernel, the initramfs, the
command line, RAM, vCPUs and the snapshot format version, so a stale one is never picked up. Then it
restores the snapshot in a new process and types commands on the serial console: an `echo` of a random
token, the CPU count from /proc/cpuinfo and /sys/devices/system/cpu/online. A cached snapshot that does not
restore (a broiler change the format version does not capture) is rebuilt, and the test says so.

A boot takes 15-30 minutes on this project's KVM-PVM host (docs/linux.md §8), a restore seconds: the test
prints both. With -c 2 the boot is also the check that two vCPUs reach user space (docs/linux.md §8).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.boot.linux.initramfs import build_probe_initramfs
from broiler.vmm.linux import DEFAULT_CMDLINE
from broiler.vmm.snapshot.format import FORMAT_VERSION
from tests.conftest import ROOT
from tests.kvm.linux_shell import SerialShell
from tests.kvm.test_linux import CACHE, LINUX_SMP, _cloud_kernel

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

RAM = "1G"
CMDLINE = f"{DEFAULT_CMDLINE} broiler.shell"
BOOT_LIMIT = 3600  # s: a boot with other work on the host's two cores (docs/linux.md §8)
COUNT_CPUS = 'n=0; while read -r k rest; do [ "$k" = processor ] && n=$((n + 1)); done < /proc/cpuinfo; echo "cpus $n"'
ONLINE = 'read -r online < /sys/devices/system/cpu/online; echo "online $online"'


def _snapshot_path(kernel: Path, initramfs: bytes, cpus: int) -> Path:
    digest = hashlib.sha256()
    for part in (kernel.read_bytes(), initramfs, CMDLINE.encode(), f"{RAM} {cpus} {FORMAT_VERSION}".encode()):
        digest.update(hashlib.sha256(part).digest())
    return CACHE / "snapshots" / f"debian-{cpus}cpu-v{FORMAT_VERSION}-{digest.hexdigest()[:16]}.snap"


def _boot_and_snapshot(tmp_path: Path, kernel: Path, initramfs: Path, cpus: int, snap: Path) -> float:
    """Boot to the shell, check the CPUs, write the snapshot (ending the VM); the boot's wall time."""
    name = f"linux-snap-{cpus}"
    args = ["-k", str(kernel), "-i", str(initramfs), "-m", RAM, "-c", str(cpus), "-p", CMDLINE]
    start = time.monotonic()
    shell = SerialShell(tmp_path, *args, "--name", name, "--timeout", str(BOOT_LIMIT))
    try:
        assert shell.wait_shell(BOOT_LIMIT), shell.text[-3000:]
        booted = time.monotonic() - start
        assert f"=== broiler: cpus {cpus}" in shell.text
        assert shell.ask(ONLINE) == f"online {'0-1' if cpus == 2 else '0'}", shell.text[-2000:]
        snap.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path))
        cmd = [sys.executable, "-m", "broiler", "snapshot", name, str(snap), "--stop"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        print(f"booted {cpus} vCPU(s) to the shell in {booted:.0f} s; {done.stdout.strip()}")
    finally:
        shell.stop()
    return booted


def _restore_and_ask(tmp_path: Path, snap: Path, cpus: int) -> tuple[float | None, str]:
    """Restore in a new process and ask; (seconds to the echo's answer or None, what went wrong)."""
    start = time.monotonic()
    shell = SerialShell(tmp_path, "--restore", str(snap), "--timeout", "600")
    try:
        token = shell.ask('echo "token $t"', limit=300)
        answered = time.monotonic() - start
        if token is None or not token.startswith("token "):
            return None, f"no answer to echo ({token!r}); console: {shell.text[-1500:]!r}"
        assert shell.ask(COUNT_CPUS) == f"cpus {cpus}", shell.text[-2000:]
        assert shell.ask(ONLINE) == f"online {'0-1' if cpus == 2 else '0'}", shell.text[-2000:]
    finally:
        status = shell.stop()
    assert status == exitcodes.INTERRUPTED, shell.err
    return answered, ""


@pytest.mark.parametrize("cpus", [1, pytest.param(2, marks=LINUX_SMP)])
def test_debian_shell_restored_from_a_snapshot(tmp_path: Path, cpus: int) -> None:
    busybox = CACHE / "busybox"
    kernel = _cloud_kernel()
    if not busybox.exists():
        pytest.skip(f"no busybox in {CACHE}: run tools/fetch-debian-kernel")
    initramfs = tmp_path / "initramfs.cpio"
    initramfs.write_bytes(build_probe_initramfs(busybox.read_bytes()))
    snap = _snapshot_path(kernel, initramfs.read_bytes(), cpus)
    answered: float | None = None
    if snap.exists():
        answered, why = _restore_and_ask(tmp_path, snap, cpus)
        if answered is None:
            print(f"cached snapshot {snap} did not restore, rebuilding it: {why}")
            snap.unlink()
        else:
            print(f"restored the cached {snap.name}")
    if answered is None:
        _boot_and_snapshot(tmp_path, kernel, initramfs, cpus, snap)
        answered, why = _restore_and_ask(tmp_path, snap, cpus)
        assert answered is not None, why
    print(f"restore of {cpus} vCPU(s) to the echo answered: {answered:.1f} s")
