"""``broiler bench --virtio``: the same virtio-blk bench kernel under broiler and under QEMU, side by side.

The kernel (guests/multiboot/virtio_blk_bench.c, shipped as broiler/guests/virtio_blk_bench.elf) finds a
modern virtio-blk function and runs 4 KiB random reads and writes at queue depth 1 and 32 and 128 KiB
sequential reads, printing one ``bench:`` line per test. Every VMM gets a fresh scratch file of the same
size in the temporary directory (the kernel overwrites it), preallocated so no run pays for allocation.
QEMU runs twice: ``cache=writeback`` goes through the host page cache as broiler's preadv/pwritev do, and
``cache=none`` (O_DIRECT) bypasses it; both are shown, because which one is "the same" depends on what a
reader compares.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .qemu import QEMU_BINARY, broiler_command, find_qemu, qemu_command, run_vmm

BENCH_KERNEL = Path(__file__).resolve().parents[1] / "guests" / "virtio_blk_bench.elf"
SCRATCH_SIZE = 256 << 20
ROWS = (("randread", 1), ("randread", 32), ("randwrite", 1), ("randwrite", 32), ("seqread", 1))
_LINE = re.compile(
    r"^bench: (?P<test>randread|randwrite|seqread) bs=(?P<bs>\d+) qd=(?P<qd>\d+) requests=(?P<requests>\d+) "
    r"errors=(?P<errors>\d+) ns=(?P<ns>\d+) iops=(?P<iops>\d+) mbps=(?P<mbps>\d+\.\d)$",
    re.M,
)


@dataclass
class VirtioRun:
    """One VMM's run of the bench kernel: (test, qd) -> (iops, MB/s), or why it failed."""

    vmm: str
    results: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    problem: str | None = None


def parse_bench_output(vmm: str, text: str, status: int) -> VirtioRun:
    run = VirtioRun(vmm)
    for m in _LINE.finditer(text):
        if int(m["errors"]):
            run.problem = f"{m['test']} qd={m['qd']}: {m['errors']} requests failed"
        run.results[(m["test"], int(m["qd"]))] = (int(m["iops"]), float(m["mbps"]))
    if "bench: done" not in text or status != 1:
        tail = " | ".join(text.strip().splitlines()[-3:])
        run.problem = run.problem or f"exit status {status}: {tail}"
    return run


def _scratch(directory: str) -> str:
    fd, path = tempfile.mkstemp(prefix="broiler-bench-", suffix=".img", dir=directory)
    try:
        os.posix_fallocate(fd, 0, SCRATCH_SIZE)
    except OSError:
        os.ftruncate(fd, SCRATCH_SIZE)  # a file system without fallocate: sparse, still the same size
    finally:
        os.close(fd)
    return path


def _cmdline(requests: int, ms: int) -> str:
    return f"requests={requests} ms={ms}"


def run_broiler(requests: int, ms: int, timeout: float) -> VirtioRun:
    disk = _scratch(tempfile.gettempdir())
    try:
        extra = ["--disk", disk, "--virtio-transport", "modern"]
        cmd = broiler_command(BENCH_KERNEL, _cmdline(requests, ms), timeout, extra=extra)
        result = run_vmm(cmd, timeout + 30)
        return parse_bench_output("broiler", result.text, -1 if result.status is None else result.status)
    finally:
        os.unlink(disk)


def run_qemu(requests: int, ms: int, timeout: float, cache: str) -> VirtioRun:
    qemu = find_qemu()
    if qemu is None:
        return VirtioRun(f"qemu cache={cache}", problem=f"{QEMU_BINARY} is not installed")
    disk = _scratch(tempfile.gettempdir())
    try:
        drive = ["-drive", f"file={disk},if=none,format=raw,id=d0,cache={cache}"]
        device = "virtio-blk-pci,drive=d0,disable-legacy=on"
        cmd = qemu_command(qemu, BENCH_KERNEL, _cmdline(requests, ms), devices=[device], extra=drive)
        result = run_vmm(cmd, timeout)
        if result.status is None:
            return VirtioRun(f"qemu cache={cache}", problem=f"no end within {timeout:g} s")
        return parse_bench_output(f"qemu cache={cache}", result.text, result.status)
    finally:
        os.unlink(disk)


def run_virtio_bench(*, requests: int, ms: int, with_qemu: bool = True) -> list[VirtioRun]:
    if not BENCH_KERNEL.exists():
        raise ConfigError(f"the bench kernel {BENCH_KERNEL} is missing (python guests/build.py)")
    timeout = 5 * len(ROWS) * ms / 1000 + 120  # each test stops by itself after ms; PIT/TSC setup aside
    runs = [run_broiler(requests, ms, timeout)]
    if with_qemu:
        runs += [run_qemu(requests, ms, timeout, cache) for cache in ("none", "writeback")]
    return runs


def render_virtio(runs: list[VirtioRun]) -> list[str]:
    """Rows: the five tests; columns: each VMM's IOPS (MB/s for seqread) and broiler / each QEMU."""
    broiler, others = runs[0], runs[1:]
    head = ["test", *(r.vmm for r in runs), *(f"broiler/{r.vmm}" for r in others)]
    rows = []
    for test, qd in ROWS:
        cells = [f"{test} {'128K' if test == 'seqread' else '4K'} qd={qd}"]
        values = []
        for r in runs:
            got = r.results.get((test, qd))
            value = None if got is None else (got[1] if test == "seqread" else float(got[0]))
            values.append(value)
            cells.append("-" if value is None else (f"{value:.1f} MB/s" if test == "seqread" else f"{value:.0f} IOPS"))
        mine = values[0]
        for value in values[1:]:
            cells.append("-" if mine is None or not value else f"{mine / value:.2f}")
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [head, *rows]]
    lines += [f"{r.vmm}: {r.problem}" for r in [broiler, *others] if r.problem]
    return lines
