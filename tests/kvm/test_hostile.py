"""Issue 13's two 12-byte hostile guests as regression tests: a doorbell flood and an unmapped sweep.

Each runs for FLOOD_SECONDS under `--timeout` and must end with status 8 (timeout) within a second or
so of it, with broiler's peak RSS under RSS_BOUND; `broiler stop` must end a flooding guest too
(status 130). Measured on this project's host (issue 13's acceptance runs, 20 s flood, 30 s sweep):
see docs/security.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from broiler import exitcodes
from tests.kvm.measured import MiB, run_measured, spawn, write_image

pytestmark = pytest.mark.kvm

# mov $0x60a0,%dx; mov $1,%ax; 1: out %ax,%dx; jmp 1b   (the async-pio doorbell, as fast as it goes)
DOORBELL_FLOOD = bytes.fromhex("66baa060 66b80100 66ef ebfc")
# mov $0xe0000000,%eax; 1: mov (%rax),%cl; inc %rax; jmp 1b   (a new unmapped MMIO address each read)
UNMAPPED_SWEEP = bytes.fromhex("b8000000e0 8a08 48ffc0 ebf9")
FLOOD_SECONDS = 8
RSS_BOUND = 150 * MiB
LATE = 3.0  # seconds past --timeout that still count as "ended on time" (Python start-up included)


@pytest.mark.parametrize(
    "name, code, extra",
    [
        ("flood", DOORBELL_FLOOD, []),
        ("flood-slow-completions", DOORBELL_FLOOD, ["--async-delay", "3600"]),
        ("sweep", UNMAPPED_SWEEP, []),
    ],
    ids=["flood", "flood-slow-completions", "sweep"],
)
def test_hostile_guest_is_bounded_and_ends_on_time(tmp_path: Path, name: str, code: bytes, extra: list[str]) -> None:
    image = write_image(tmp_path, f"{name}.bin", code)
    run = run_measured("run", "--guest", image, "--timeout", str(FLOOD_SECONDS), *extra, limit=FLOOD_SECONDS + 30)
    assert run.status == exitcodes.TIMEOUT, run.describe()
    assert run.seconds < FLOOD_SECONDS + LATE, run.describe()
    assert run.peak_rss < RSS_BOUND, run.describe()
    assert "Traceback" not in run.stderr, run.describe()


def test_broiler_stop_ends_a_flooding_guest(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    image = write_image(tmp_path, "flood.bin", DOORBELL_FLOOD)
    child = spawn("run", "--guest", image, "--name", "flooder", "--timeout", "60", env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stop = run_measured("stop", "flooder", env=env, limit=20)
            if stop.status == 0:
                break
            time.sleep(0.3)  # not listening yet
        assert stop.status == 0, stop.describe()
        stopped_at = time.monotonic()
        run = child.wait(limit=30)
    finally:
        child.proc.kill()
    assert run.status == exitcodes.INTERRUPTED, run.describe()
    assert time.monotonic() - stopped_at < LATE, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
