"""The C floor: build broiler/bench/floor.c with the machine's cc, hand it guest RAM prepared by broiler's own
flat64 loader, run it and read its JSON line.

Why a memfd: the floor must run the *same* guest in the *same* environment. Instead of a second copy
of the flat64 set-up in C (GDT, page tables, image placement), broiler's ``load_flat64`` writes guest
RAM into a memfd laid out like ``GuestMemory`` (low RAM at offset 0, RAM above 4 GiB at offset 3 GiB);
the C program maps it MAP_PRIVATE as its guest RAM and only sets registers (values from the loader).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..boot.entry import EntryState
from ..boot.flat64 import AP_STACK_STRIDE, load_flat64
from ..core.memory import GuestMemory, MemoryMap
from .guest import BENCH_PARAMS, CTRL_PORT, PARAMS_STRIDE, Batch

SOURCE = Path(__file__).resolve().with_name("floor.c")  # shipped as package data


class FloorUnavailable(Exception):
    """No C floor on this machine; the message is the one line the table prints."""


class MemfdGuestMemory(GuestMemory):
    """GuestMemory over a memfd, so another process can map the very same guest RAM."""

    def __init__(self, memory_map: MemoryMap) -> None:  # no super(): the regions come from the memfd
        self.map = memory_map
        self.fd = os.memfd_create("broiler-bench-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, memory_map.ram_size)  # sparse: only the pages the loader writes exist
        self.regions = []
        offset = 0
        for r in memory_map.ram:
            mm = mmap.mmap(self.fd, r.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            self.regions.append((r.start, r.end, mm))
            offset += r.size

    def close(self) -> None:
        for _, _, mm in self.regions:
            mm.close()
        os.close(self.fd)


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build(workdir: Path) -> Path:
    """Compile the floor into ``workdir``; FloorUnavailable says why not in one line."""
    cc = compiler()
    if cc is None:
        raise FloorUnavailable("no C compiler (cc) on this machine: the C floor column is skipped")
    if not SOURCE.is_file():
        raise FloorUnavailable(f"the C floor source {SOURCE} is missing (run from a broiler checkout)")
    return _compile(cc, workdir / "floor", [])


def build_library(workdir: Path) -> Path:
    """The same source as a shared library (floor_run(), see floor.c), for the bench's steps."""
    cc = compiler()
    if cc is None or not SOURCE.is_file():
        raise FloorUnavailable("no C compiler (cc) or no floor.c: the steps are skipped")
    return _compile(cc, workdir / "floor.so", ["-shared", "-fPIC", "-DFLOOR_LIBRARY"])


def _compile(cc: str, out: Path, flags: list[str]) -> Path:
    proc = subprocess.run([cc, "-O2", "-pthread", *flags, "-o", str(out), str(SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        raise FloorUnavailable(f"building the C floor failed: {first}")
    return out


def config_text(
    mem_fd: int, mem_size: int, state: EntryState, cpus: int, batches: list[Batch], zones: list[str]
) -> str:
    """The floor's stdin: where guest RAM is, vCPU 0's entry state from the flat64 loader (the floor
    gives vCPU k RSP - k * AP_STACK_STRIDE and RDI = k, as Machine.load_flat64 does), the batches."""
    gdt_base, gdt_limit = state.gdt or (0, 0)
    lines = [
        f"mem_fd {mem_fd}",
        f"mem {mem_size:#x}",
        f"cpus {cpus}",
        f"ctrl {CTRL_PORT:#x}",
        f"params {BENCH_PARAMS:#x} {PARAMS_STRIDE}",
        "state "
        + " ".join(
            hex(v)
            for v in (
                state.cr0,
                state.cr3,
                state.cr4,
                state.efer,
                gdt_base,
                gdt_limit,
                state.rip,
                state.regs["rsp"],
                AP_STACK_STRIDE,
            )
        ),
        *zones,
    ]
    lines += [f"batch {b.op} {b.addr:#x} {b.n}" for b in batches]
    return "\n".join(lines) + "\n"


@contextmanager
def prepared_guest(
    image: bytes, mem_size: int, cpus: int, batches: list[Batch], zones: list[str]
) -> Iterator[tuple[int, str]]:
    """(memfd with guest RAM written by broiler's flat64 loader, the floor's configuration text)."""
    memory = MemfdGuestMemory(MemoryMap(mem_size))
    try:
        state = load_flat64(memory, image)
        yield memory.fd, config_text(memory.fd, mem_size, state, cpus, batches, zones)
    finally:
        memory.close()


def run_floor(
    exe: Path, image: bytes, mem_size: int, cpus: int, batches: list[Batch], zones: list[str], timeout: float = 600
) -> dict[str, object]:
    """Run one floor process; returns its JSON (startup_ns, batches_ns, exits)."""
    with prepared_guest(image, mem_size, cpus, batches, zones) as (fd, text):
        proc = subprocess.run([str(exe)], input=text, capture_output=True, text=True, timeout=timeout, pass_fds=(fd,))
    if proc.returncode != 0:
        raise RuntimeError(f"the C floor failed (status {proc.returncode}): {proc.stderr.strip()[:300]}")
    return json.loads(proc.stdout)


def temp_build_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="broiler-bench-")
