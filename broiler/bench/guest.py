"""The bench guest's protocol and the paths it measures (guests/bench_io.c; broiler/bench/floor.c mirrors it).

vCPU k enters as the flat64 contract says (RDI = k, its own stack) and owns a 64-byte parameter
block at ``BENCH_PARAMS + 64 * k``: op (u32 at +0), n (u64 at +8), addr (u64 at +16), flag (u32 at +24).
Before every batch the guest writes k to ``CTRL_PORT``; the host records the time, writes the next
batch and resumes it. 0x90000 is RAM the flat64 loader never touches (above the stack top 0x80000,
below the EBDA).
"""

from __future__ import annotations

from dataclasses import dataclass

GUEST_NAME = "bench_io"
BENCH_PARAMS = 0x90000
PARAMS_STRIDE = 64
FLAG_OFFSET = 24
CTRL_PORT = 0x6078

OP_STOP, OP_NOP, OP_PIO_OUT, OP_PIO_IN, OP_MMIO_WRITE, OP_MMIO_READ, OP_PINGPONG = range(7)

# Where the paths live: next to the seed's demo devices, inside the platform MMIO page.
SYNC_PORT = 0x6070  # a registered Python device (4 bytes)
IOEVENTFD_PORT = 0x6074  # caught by an ioeventfd (any value)
DOORBELL_PORT = 0x607C  # ioeventfd whose handler sets the guest's flag (ping-pong)
SYNC_MMIO = 0xD000_0100  # a registered Python device (16 bytes)
IOEVENTFD_MMIO = 0xD000_0200
COALESCED_MMIO = 0xD000_0300
COALESCED_SIZE = 0x100
DEVICE_SIZE = 0x10

# How each path is set up on the host side.
SYNC, IOEVENTFD, COALESCED, PINGPONG, NONE = "sync", "ioeventfd", "coalesced", "pingpong", "none"


@dataclass(frozen=True, slots=True)
class Path:
    key: str
    label: str
    op: int
    addr: int
    kind: str


PATHS: tuple[Path, ...] = (
    Path("loop", "no IO (the loop alone)", OP_NOP, 0, NONE),
    Path("pio_out", "sync PIO out", OP_PIO_OUT, SYNC_PORT, SYNC),
    Path("pio_in", "sync PIO in", OP_PIO_IN, SYNC_PORT, SYNC),
    Path("mmio_write", "sync MMIO write", OP_MMIO_WRITE, SYNC_MMIO, SYNC),
    Path("mmio_read", "sync MMIO read", OP_MMIO_READ, SYNC_MMIO, SYNC),
    Path("ioeventfd_pio", "ioeventfd PIO", OP_PIO_OUT, IOEVENTFD_PORT, IOEVENTFD),
    Path("ioeventfd_mmio", "ioeventfd MMIO", OP_MMIO_WRITE, IOEVENTFD_MMIO, IOEVENTFD),
    Path("coalesced_mmio", "coalesced MMIO", OP_MMIO_WRITE, COALESCED_MMIO, COALESCED),
    Path("doorbell_rtt", "doorbell→handler round trip", OP_PINGPONG, DOORBELL_PORT, PINGPONG),
)
PATH_BY_KEY = {p.key: p for p in PATHS}
SCALING_PATH = "pio_out"


@dataclass(frozen=True, slots=True)
class Batch:
    path: str  # Path.key
    n: int
    op: int
    addr: int
    tag: str  # "warmup", "n1" or "n2"
    rep: int


def schedule(paths: list[Path], n1: int, n2: int, reps: int) -> list[Batch]:
    """Warm every path once, then interleave the repetitions (rep by rep, path by path) so slow drift
    of the host spreads over all paths instead of biasing the last one."""
    batches = [Batch(p.key, min(n1, 50), p.op, p.addr, "warmup", -1) for p in paths]
    for rep in range(reps):
        for p in paths:
            batches.append(Batch(p.key, n1, p.op, p.addr, "n1", rep))
            batches.append(Batch(p.key, n2, p.op, p.addr, "n2", rep))
    return batches
