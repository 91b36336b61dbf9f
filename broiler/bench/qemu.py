"""One Multiboot bench kernel, two VMMs: the command lines that boot it under QEMU (``-kernel``) and under
broiler (a child ``broiler run -k``), and running either to its end. Shared by ``--virtio`` (virtio.py)
and the self-timed IO column (qemu_io.py), so both start QEMU the same way.

Both kernels end through isa-debug-exit (port 0xf4): a guest's ``return 0`` is process status 1 in
either VMM.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

QEMU_BINARY = "qemu-system-x86_64"
GUEST_DONE_STATUS = 1  # isa-debug-exit: a write of 0 is status (0 << 1) | 1


def find_qemu() -> str | None:
    return shutil.which(QEMU_BINARY)


def find_qboot(qemu: str) -> Path | None:
    """qboot, QEMU's minimal x86 firmware, from QEMU's data folder: it reaches a ``-kernel`` in well under a
    second where SeaBIOS takes seconds here (its CPL0 code runs in KVM-PVM's emulator). It assigns no PCI BARs,
    so only kernels that place their devices' BARs themselves may use it."""
    for folder in (Path(qemu).resolve().parent.parent / "share" / "qemu", Path("/usr/share/qemu")):
        if (folder / "qboot.rom").is_file():
            return folder / "qboot.rom"
    return None


def qemu_version(qemu: str) -> str | None:
    """The first line of ``--version`` (e.g. "QEMU emulator version 7.2.22 ..."), None if it says nothing."""
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def qemu_command(
    qemu: str, kernel: Path, append: str, *, mem: str = "128M", devices: Sequence[str] = (), extra: Sequence[str] = ()
) -> list[str]:
    """QEMU's pc machine on KVM with a Multiboot kernel, serial on stdout, isa-debug-exit, then ``extra``
    arguments as they are (e.g. ``-drive ...``) and one ``-device`` per entry of ``devices``."""
    cmd = [qemu, "-accel", "kvm", "-cpu", "qemu64", "-M", "pc", "-m", mem, "-display", "none",
           "-serial", "stdio", "-no-reboot", "-nic", "none", "-kernel", str(kernel), "-append", append,
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4", *extra]  # fmt: skip
    for device in devices:
        cmd += ["-device", device]
    return cmd


def broiler_command(
    kernel: Path, append: str, timeout: float, *, mem: str = "128M", extra: Sequence[str] = ()
) -> list[str]:
    """A child ``broiler run -k`` of this interpreter, so it runs the broiler this bench was started from."""
    return [sys.executable, "-m", "broiler", "run", "-k", str(kernel), "-m", mem, *extra, "-p", append,
            "--timeout", f"{timeout:g}"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class VmmResult:
    text: str  # stdout then stderr
    status: int | None  # None: killed after the time-out

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.text.strip().splitlines()[-lines:])


def run_vmm(cmd: list[str], timeout: float) -> VmmResult:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        partial = [x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)]
        return VmmResult("".join(partial), None)
    return VmmResult(proc.stdout + proc.stderr, proc.returncode)
