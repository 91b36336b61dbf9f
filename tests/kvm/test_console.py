"""`--console serial` under /dev/kvm: 10,000 bytes piped or redirected into a guest that echoes its UART
byte by byte all come back, in order. Three PIO exits a byte make the guest far slower than stdin, so its
4 KiB receive FIFO fills at once: before back-pressure, everything past the first 4 KiB was dropped and
the guest waited for the rest until the timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.kvm.helpers import passed

pytestmark = pytest.mark.kvm

TYPED = bytes(32 + (i * 7 + i // 95) % 95 for i in range(10_000))  # printable: no Ctrl-A, no line editing

# A flat64 guest (GNU as, --64):
#     mov $10000, %ecx
# next: mov $0x3FD, %dx
# wait: in %dx, %al          # LSR
#       test $1, %al          # DR
#       jz wait
#       mov $0x3F8, %dx
#       in %dx, %al          # RBR
#       out %al, %dx         # THR: echo it
#       dec %ecx
#       jnz next
#       mov $0xF4, %dx
#       xor %eax, %eax
#       out %al, %dx         # debug exit 0: status 1
#       hlt
ECHO_10000 = bytes.fromhex("b91027000066bafd03eca80174fb66baf803eceeffc975ed66baf40031c0eef4")


@pytest.mark.parametrize("source", ["pipe", "file"])
def test_every_byte_of_a_long_input_reaches_a_slow_guest(source: str, tmp_path: Path, env: dict[str, str]) -> None:
    image = tmp_path / "echo.bin"
    image.write_bytes(ECHO_10000)
    typed = tmp_path / "typed"
    typed.write_bytes(TYPED)
    command = [sys.executable, "-m", "broiler", "run", "--guest", str(image), "--console", "serial", "--timeout", "60"]
    if source == "pipe":
        run = subprocess.run(command, input=TYPED, capture_output=True, timeout=120, env=env, cwd=ROOT)
    else:
        with open(typed, "rb") as stdin:  # a regular file: read on the console's own thread
            run = subprocess.run(command, stdin=stdin, capture_output=True, timeout=120, env=env, cwd=ROOT)
    assert passed(run.returncode), run.stderr.decode(errors="replace")
    assert run.stdout == TYPED
