"""A broiler process whose serial console is a busybox shell a test types into (tests/kvm/test_linux*.py).

The probe initramfs (broiler/boot/linux/initramfs.py) prints its report, "=== broiler: done", and with
`broiler.shell` on the command line then runs a shell on the console instead of powering off. stdin of
the broiler process feeds the guest's UART (--console serial), stdout is what the guest printed.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT


class SerialShell:
    """`broiler run ARGS --console serial` with pipes; ``wait_for`` reads until a line appears."""

    def __init__(self, runtime_dir: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime_dir))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broiler", "run", "--console", "serial", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.out = b""
        self.err = ""

    def wait_for(self, want: str, limit: float, start: int = 0) -> bool:
        """Read the console until ``want`` appears after byte ``start`` (True), the VM ends or ``limit`` s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + limit
        while want.encode() not in self.out[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not self.selector.select(timeout=min(left, 5)):
                if self.proc.poll() is not None:
                    return False
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            self.out += chunk
        return True

    def wait_shell(self, limit: float) -> bool:
        """Wait for the probe's "=== broiler: done" and then the shell's prompt ("# ", busybox as root):
        typed input before the shell opens the console could be lost."""
        marker = b"=== broiler: done"
        if not self.wait_for(marker.decode(), limit):
            return False
        return self.wait_for("# ", limit, start=self.out.index(marker))

    def ask(self, command: str, limit: float = 120) -> str | None:
        """Run ``command`` (shell text whose output may use "$TOKEN") and return what it printed between
        two markers carrying a fresh random token, or None if no answer came within ``limit`` s. The tty
        echoes the typed line, which holds "${t}" where the answer holds the token itself."""
        assert self.proc.stdin is not None
        token = secrets.token_hex(8)
        start = len(self.out)
        line = f't={token}; echo "begin-$t"; {command}; echo "end-$t"\n'
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        if not self.wait_for(f"end-{token}", limit, start):
            return None
        text = self.out[start:].decode(errors="replace")
        body = text[text.index(f"begin-{token}") + len(f"begin-{token}") : text.index(f"end-{token}")]
        return body.replace("\r", "").strip()

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM the VM (if still running); its status, its stderr's tail in ``self.err``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        self.err = err.decode(errors="replace")[-2000:]
        return self.proc.returncode
