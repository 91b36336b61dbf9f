"""Issue 6: a real Debian kernel boots under broiler and reports the seed's memory map.

Needs the Debian 12 cloud kernel and busybox in the cache `tools/fetch-debian-kernel` fills
(~/.cache/broiler/linux, or $BROILER_LINUX_CACHE); .ci/run fetches them. Without them the tests skip
and say how to get them. On this host (KVM-PVM) the kernel runs in KVM's instruction emulator: the
first two tests stop the VM once the kernel has printed what they check; the third boots into user
space (busybox /init, its system calls completed by broiler's syscall assist) and takes ~15 minutes
here (docs/linux.md §8). Once broiler has `--rootfs` (virtio-blk), that third test boots from an ext4
image instead: a virtio initramfs loads the Debian kernel's virtio modules and switch_roots into the probe
on /dev/vda, which also writes a file on / (read back with debugfs after the VM ends), reads /dev/hwrng
(--rng) and writes to /dev/hvc0 (docs/linux.md, "A root file system on virtio-blk"). hvc0 goes to a file
(--virtio-console-log), not stdout: the probe's report and the kernel log are on ttyS0 (stdout), and a
line on hvc0 could land in the middle of one of theirs; the file also shows exactly what reached hvc0.
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
from broiler.boot.linux import rootfs
from broiler.boot.linux.initramfs import build_probe_initramfs
from broiler.errors import ConfigError
from broiler.vmm.linux import DEFAULT_CMDLINE
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


def _broiler_has_rootfs() -> bool:
    """Whether this broiler has virtio-blk root disks (`broiler run --help` mentions --rootfs)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "broiler", "run", "--help"]
    return "--rootfs" in subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60).stdout


def _root_disk(tmp_path: Path, kernel: Path, busybox: bytes) -> tuple[Path, Path]:
    """Today's virtio initramfs (the kernel's own modules, from its .deb) and a fresh rootfs.ext4."""
    version = kernel.name.removeprefix("vmlinuz-")
    debs = sorted((CACHE / "debs").glob(f"linux-image-{version}_*.deb"))
    if not debs:
        pytest.skip(f"no linux-image-{version} .deb in {CACHE / 'debs'}: run tools/fetch-debian-kernel")
    initramfs = tmp_path / "initramfs-virtio.cpio"
    initramfs.write_bytes(rootfs.virtio_initramfs_from_deb(busybox, debs[-1].read_bytes())[1])
    image = tmp_path / "rootfs.ext4"
    try:
        rootfs.build_rootfs_image(busybox, image)
    except ConfigError as e:
        pytest.skip(f"cannot build the root disk: {e}")
    return initramfs, image


def _check_root_disk(text: str, image: Path, hvc0_log: Path, err: str) -> None:
    """What only the virtio-blk boot shows: the root mount, the virtio functions, hwrng, hvc0, the file."""
    assert "=== broiler: root failed" not in text, text[-3000:]
    assert "/dev/vda ext4 rw" in _section(text, "root"), (_section(text, "root"), err)
    virtio = _section(text, "virtio")
    pci = [line.split() for line in virtio if line.startswith("pci ")]
    bound = {line.split()[3]: line.split()[2] for line in virtio if line.startswith("virtio ")}
    assert any(f[3] in ("0x1001", "0x1042") and f[4] == "virtio-pci" for f in pci), virtio  # the disk
    assert bound.get("virtio_blk") == "0x0002", virtio
    # The rng and the console (virtio device ids 4 and 3; the test asks for both with --rng and
    # --virtio-console-log). Kernel messages may interleave on the serial console, so lines are found
    # by their prefix.
    assert bound.get("virtio_rng") == "0x0004" and bound.get("virtio_console") == "0x0003", virtio
    hwrng = _section(text, "hwrng")
    assert any(line.startswith("current virtio_rng") for line in hwrng), hwrng
    got = next((line.split() for line in hwrng if line.startswith("bytes ")), [])
    assert got[1:2] == ["64"] and len(got[2]) == 128 and got[2] != "0" * 128, hwrng
    assert "hvc0 write ok" in _section(text, "hvc0"), _section(text, "hvc0")
    # Exactly the probe's line reached hvc0 (the tty's ONLCR turns its newline into CR LF).
    assert hvc0_log.read_bytes().replace(b"\r\n", b"\n") == (rootfs.HVC0_LINE + "\n").encode(), hvc0_log.read_bytes()
    assert "synced" in _section(text, "sync")
    # The file the guest wrote through virtio-blk, read from the image after the VM ended.
    wrote = rootfs.read_image_file(image, rootfs.WROTE_PATH)
    assert wrote == (rootfs.WROTE_LINE + "\n").encode(), wrote


def test_debian_user_space_sees_the_seed_memory_map(tmp_path: Path) -> None:
    """The probe runs in user mode and prints /proc/iomem, /proc/ioports and the PCI functions.

    With --rootfs it is the probe on the virtio-blk root disk, which also uses the virtio devices."""
    busybox = CACHE / "busybox"
    kernel = _cloud_kernel()
    if not busybox.exists():
        pytest.skip(f"no busybox in {CACHE}: run tools/fetch-debian-kernel")
    image: Path | None = None
    hvc0_log = tmp_path / "hvc0.txt"
    args: list[str] = []
    limit = 2700
    if _broiler_has_rootfs():
        initramfs, image = _root_disk(tmp_path, kernel, busybox.read_bytes())
        args = ["--rootfs", str(image), "-p", f"{DEFAULT_CMDLINE} root=/dev/vda rw rootfstype=ext4"]
        args += ["--rng", "--virtio-console-log", str(hvc0_log)]
        limit = 3600  # ~20 more fork+execs (insmod, mount, switch_root...) at 10-30 s each here
    else:
        initramfs = tmp_path / "initramfs.cpio"  # always today's /init script, whatever the cache holds
        initramfs.write_bytes(build_probe_initramfs(busybox.read_bytes()))
    stats = tmp_path / "stats.json"
    args += ["-i", str(initramfs), "--stats-json", str(stats)]
    text, err, status = _boot_until(tmp_path, ["=== broiler: done"], *args, limit=limit, kernel=kernel)
    assert "=== broiler: done" in text, f"the probe did not finish; stderr: {err}"
    if image is not None:
        _check_root_disk(text, image, hvc0_log, err)

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

    pci = [line for line in _section(text, "pci devices") if line.split()[1] != "0x1af4"]  # virtio: above
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


# -c 2 reaches user space (docs/linux.md §8) but not reliably: restored from a snapshot taken just before
# the shell's exec, a freshly exec'd busybox crashed in 9 of 28 starts, its TLS copied from a page other than
# the one its page tables map (the FS base itself is right). A 2-vCPU boot also takes 25-30 min here. Until
# that is fixed these tests run only when asked for, so CI stays a statement about what works.
LINUX_SMP = pytest.mark.skipif(
    os.environ.get("BROILER_LINUX_SMP") != "1",
    reason="Linux with 2 vCPUs: opt-in (BROILER_LINUX_SMP=1) until the crash after exec is fixed (linux.md §8)",
)


@LINUX_SMP
def test_debian_two_cpus_reach_user_space(tmp_path: Path) -> None:
    """-c 2 into user space: the probe /init runs and counts two CPUs. The AP takes part in Linux's live
    code patching (text_poke_bp's int3 + IPIs), which needs instruction completion to honour what each
    vCPU fetched (docs/linux.md §7). ~25-30 min here."""
    busybox = CACHE / "busybox"
    if not busybox.exists():
        pytest.skip(f"no busybox in {CACHE}: run tools/fetch-debian-kernel")
    initramfs = tmp_path / "initramfs.cpio"
    initramfs.write_bytes(build_probe_initramfs(busybox.read_bytes()))
    args = ["-c", "2", "-i", str(initramfs)]
    text, err, status = _boot_until(tmp_path, ["=== broiler: done"], *args, limit=3600)
    assert "=== broiler: done" in text, f"the probe did not finish; stderr: {err}"
    assert "=== broiler: cpus 2" in text, text[-3000:]
    # Stopped by the test once done was printed, or already powered off by the probe.
    assert status in (exitcodes.INTERRUPTED, 0), err
