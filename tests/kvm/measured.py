"""Run `broiler` as a child process and measure it: exit status, output, wall time and peak RSS.

Peak RSS is the child's own ``VmHWM`` (/proc/PID/status), read while it runs. Not ``wait4``'s
``ru_maxrss``: Linux carries the parent's peak into a child across fork and exec (the old mm's high-water
mark is folded into the process's maxrss at exec), so a child of a 95 MB pytest never reports less than
95 MB. The last reading is at most one poll (50 ms) before the exit; a child gone before the first reading
falls back to ``ru_maxrss`` (an upper bound)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.conftest import ROOT

MiB = 1 << 20


@dataclass(frozen=True)
class Measured:
    status: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes

    def describe(self) -> str:
        tail = self.stderr[-800:]
        return f"status {self.status} after {self.seconds:.1f} s, peak RSS {self.peak_rss / MiB:.0f} MB; stderr: {tail}"


@dataclass
class Child:
    """A running `python -m broiler ...`; its output goes to temporary files (a pipe could fill and
    stall it while the test waits)."""

    proc: subprocess.Popen[bytes]
    started: float
    outputs: tuple[IO[bytes], IO[bytes]] = field(repr=False)

    def wait(self, limit: float) -> Measured:
        """Reap with wait4; after ``limit`` seconds kill it (the caller's status check then fails)."""
        hwm = 0
        while True:
            hwm = max(hwm, own_peak_rss(self.proc.pid))
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > self.started + limit:
                self.proc.kill()
            time.sleep(0.05)
        seconds = time.monotonic() - self.started
        self.proc.returncode = code = os.waitstatus_to_exitcode(status)
        texts = []
        for f in self.outputs:
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return Measured(code, texts[0], texts[1], seconds, hwm or usage.ru_maxrss * 1024)


def own_peak_rss(pid: int) -> int:
    """The process's own peak resident set (VmHWM) in bytes; 0 if it is gone or not readable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def spawn(*args: str, env: dict[str, str] | None = None) -> Child:
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed by Child.wait)
    full_env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "broiler", *args], stdout=out, stderr=err, env=full_env, cwd=ROOT)
    return Child(proc, started, (out, err))


def run_measured(*args: str, limit: float = 60, env: dict[str, str] | None = None) -> Measured:
    return spawn(*args, env=env).wait(limit)


def write_image(folder: Path, name: str, code: bytes) -> str:
    path = folder / name
    path.write_bytes(code)
    return str(path)
