"""The random-access fuzz guest (guests/fuzz.c) under broiler, for a few seeds on 1 and 2 vCPUs.

Each run must end with the guest's own verdict (debug exit 0x2A: every vCPU finished its random
accesses and the sync demo's read-only registers kept their values), print no traceback, and keep
broiler's peak RSS under RSS_BOUND. Run more seeds with BROILER_FUZZ_SEEDS=N (docs/security.md).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from broiler.guests import packaged_guest
from tests.kvm.measured import MiB, run_measured, write_image

pytestmark = pytest.mark.kvm

SEED_MARKER = struct.pack("<Q", 0x4445455345565A46)  # "FZVESEED", before the seed and the vCPU count
GUEST_DONE = 0x2A << 1 | 1
RSS_BOUND = 100 * MiB  # measured: ~21 MB for 2 vCPUs, 57k exits
SEEDS = [(1, 1), (2, 2), (0xB0B, 2)] + [
    (1000 + n, 1 + n % 2) for n in range(int(os.environ.get("BROILER_FUZZ_SEEDS", "0")))
]


def seeded_image(folder: Path, seed: int, cpus: int) -> str:
    image = bytearray(packaged_guest("fuzz"))
    at = image.index(SEED_MARKER) + len(SEED_MARKER)
    struct.pack_into("<QQ", image, at, seed, cpus)
    return write_image(folder, f"fuzz-{seed:x}-{cpus}.bin", bytes(image))


@pytest.mark.parametrize("seed, cpus", SEEDS)
def test_fuzz_guest_survives(tmp_path: Path, seed: int, cpus: int) -> None:
    image = seeded_image(tmp_path, seed, cpus)
    run = run_measured(
        "run", "--guest", image, "-m", "8M", "-c", str(cpus), "--timeout", "25", limit=45
    )  # ~2 s quiet; room for a loaded host
    assert run.status == GUEST_DONE, run.describe()
    assert f"fuzz: seed {seed:#x}, {cpus} vCPU(s) done" in run.stdout
    assert "Traceback" not in run.stderr, run.describe()
    assert run.peak_rss < RSS_BOUND, run.describe()
