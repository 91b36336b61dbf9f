"""``broiler bench --breakdown``: where broiler's sync exit time goes, measured, not guessed.

The bare loop is grown one piece at a time towards broiler's vCPU loop, each step a loop of its own,
all on the same VM harness as column (b) and timed with the same ΔN batches:

    bare      ``fcntl.ioctl(fd, KVM_RUN)``, exit reason, control-port check, IN/read fill
    +arg 0    the same with ``fcntl.ioctl(fd, KVM_RUN, 0)`` (what broiler's loop calls)
    +decode   every field broiler's loop reads (port, size, count, data offset, direction; MMIO
              address, length, direction) and the width-indexed view
    +lookup   the bus's per-address dict (``bus.cache.get(addr) or bus.resolve(addr)``)
    +region   ``Region.write/read``: straddle check, two perf_counter_ns, stats, then the device
    broiler   a faithful copy of ``VcpuThread._loop`` (stopping flag, exit counts, ring check)

plus the measured proposals (lean loop variants) from docs/bench.md. Each step's cost is its median
minus the previous step's; the last row, broiler's real loop (column c), shows what the machine around
the loop adds (event loop thread, signal handling).
"""

from __future__ import annotations

import fcntl
import importlib.util
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..frontend.cli import packaged_guest
from ..kvm import abi
from .floor import SOURCE as FLOOR_SOURCE
from .floor import FloorUnavailable, compiler, run_floor
from .floor import build as build_floor
from .guest import CTRL_PORT, DEVICE_SIZE, GUEST_NAME, PATH_BY_KEY, SYNC_MMIO, SYNC_PORT, schedule
from .hosts import LoopContext, bare_loop, run_bare, run_broiler
from .stats import per_op_us, summarize

KVM_RUN, EXIT_IO, EXIT_MMIO = abi.KVM_RUN, abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO
LADDER_PATHS = ("pio_out", "mmio_write", "pio_in", "mmio_read")


def bare_arg0(ctx: LoopContext) -> None:
    """The bare loop with broiler's ``ioctl(fd, KVM_RUN, 0)``: the price of the third argument."""
    ioctl, fd, cpu, control = fcntl.ioctl, ctx.fd, ctx.cpu, ctx.driver.control
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    while True:
        ioctl(fd, KVM_RUN, 0)
        reason = u32[2]
        if reason == EXIT_IO:
            if u16[17] == CTRL_PORT:
                if not control(cpu):
                    return
            elif not u8[32]:
                u32[u64[5] >> 2] = 0
        elif reason == EXIT_MMIO:
            if not u8[52]:
                u64[5] = 0
        else:
            raise RuntimeError(f"unexpected exit {reason}")


def with_decode(ctx: LoopContext) -> None:
    ioctl, fd, cpu, control = fcntl.ioctl, ctx.fd, ctx.cpu, ctx.driver.control
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    views = (None, u8, u16, None, u32, None, None, None, u64)
    while True:
        ioctl(fd, KVM_RUN, 0)
        reason = u32[2]
        if reason == EXIT_IO:
            port, size, count, offset = u16[17], u8[33], u32[9], u64[5]
            view = views[size]
            if port == CTRL_PORT:
                if not control(cpu):
                    return
            elif count == 1 and not u8[32]:
                view[offset // size] = 0  # type: ignore[index]
        elif reason == EXIT_MMIO:
            _addr, size = u64[4], u32[12]
            if size in (1, 2, 4, 8):
                view = views[size]
                if not u8[52]:
                    view[40 // size] = 0  # type: ignore[index]
        else:
            raise RuntimeError(f"unexpected exit {reason}")


def with_lookup(ctx: LoopContext) -> None:
    ioctl, fd, cpu, control = fcntl.ioctl, ctx.fd, ctx.cpu, ctx.driver.control
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    views = (None, u8, u16, None, u32, None, None, None, u64)
    pio_bus, mmio_bus = ctx.machine.pio_bus, ctx.machine.mmio_bus
    while True:
        ioctl(fd, KVM_RUN, 0)
        reason = u32[2]
        if reason == EXIT_IO:
            port, size, count, offset = u16[17], u8[33], u32[9], u64[5]
            view = views[size]
            if port == CTRL_PORT:
                if not control(cpu):
                    return
                continue
            target = pio_bus.cache.get(port) or pio_bus.resolve(port)
            if count == 1 and not u8[32] and target is not None:
                view[offset // size] = 0  # type: ignore[index]
        elif reason == EXIT_MMIO:
            addr, size = u64[4], u32[12]
            target = mmio_bus.cache.get(addr) or mmio_bus.resolve(addr)
            if size in (1, 2, 4, 8):
                view = views[size]
                if not u8[52] and target is not None:
                    view[40 // size] = 0  # type: ignore[index]
        else:
            raise RuntimeError(f"unexpected exit {reason}")


def with_region(ctx: LoopContext) -> None:
    ioctl, fd, cpu, control = fcntl.ioctl, ctx.fd, ctx.cpu, ctx.driver.control
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    views = (None, u8, u16, None, u32, None, None, None, u64)
    pio_bus, mmio_bus = ctx.machine.pio_bus, ctx.machine.mmio_bus
    while True:
        ioctl(fd, KVM_RUN, 0)
        reason = u32[2]
        if reason == EXIT_IO:
            port, size, count, offset = u16[17], u8[33], u32[9], u64[5]
            view = views[size]
            if port == CTRL_PORT:
                if not control(cpu):
                    return
                continue
            target = pio_bus.cache.get(port) or pio_bus.resolve(port)
            if count == 1:
                if u8[32]:
                    target.write(port, size, view[offset // size])  # type: ignore[index]
                else:
                    view[offset // size] = target.read(port, size)  # type: ignore[index]
        elif reason == EXIT_MMIO:
            addr, size = u64[4], u32[12]
            target = mmio_bus.cache.get(addr) or mmio_bus.resolve(addr)
            if size in (1, 2, 4, 8):
                view = views[size]
                if u8[52]:
                    target.write(addr, size, view[40 // size])  # type: ignore[index]
                else:
                    view[40 // size] = target.read(addr, size)  # type: ignore[index]
        else:
            raise RuntimeError(f"unexpected exit {reason}")


def broiler_copy(ctx: LoopContext) -> None:
    """VcpuThread._loop's IO and MMIO branches as they stand (control goes through the bus too)."""
    machine = ctx.machine
    ioctl, fd = fcntl.ioctl, ctx.fd
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    views = (None, u8, u16, None, u32, None, None, None, u64)
    pio_bus, mmio_bus = machine.pio_bus, machine.mmio_bus
    ring32 = ctx.ring32
    counts = [0] * 64
    while not machine.stopping:
        ioctl(fd, KVM_RUN, 0)
        if ring32 is not None and ring32[0] != ring32[1]:
            raise RuntimeError("the ladder has no coalesced zone")
        reason = u32[2]
        counts[reason] += 1
        if reason == EXIT_IO:
            port = u16[17]
            size = u8[33]
            count = u32[9]
            offset = u64[5]
            view = views[size]
            target = pio_bus.cache.get(port) or pio_bus.resolve(port)
            if count == 1:
                if u8[32]:
                    target.write(port, size, view[offset // size])  # type: ignore[index]
                else:
                    view[offset // size] = target.read(port, size)  # type: ignore[index]
            else:
                raise RuntimeError("string IO is not part of the ladder")
        elif reason == EXIT_MMIO:
            addr = u64[4]
            size = u32[12]
            target = mmio_bus.cache.get(addr) or mmio_bus.resolve(addr)
            if size in (1, 2, 4, 8):
                view = views[size]
                if u8[52]:
                    target.write(addr, size, view[40 // size])  # type: ignore[index]
                else:
                    view[40 // size] = target.read(addr, size)  # type: ignore[index]
        else:
            raise RuntimeError(f"unexpected exit {reason}")


FASTPATH_SOURCE = FLOOR_SOURCE.with_name("fastpath.c")


def build_fastpath(workdir: Path) -> ModuleType | None:
    """broiler/bench/fastpath.c as an extension module, or None (no compiler, headers or source)."""
    cc = compiler()
    include = sysconfig.get_paths().get("include")
    if cc is None or not include or not (Path(include) / "Python.h").is_file() or not FASTPATH_SOURCE.is_file():
        return None
    target = workdir / f"broiler_fastpath{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    proc = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", f"-I{include}", "-o", str(target), str(FASTPATH_SOURCE)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None
    spec = importlib.util.spec_from_file_location("broiler_fastpath", target)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled(module: ModuleType) -> Callable[[LoopContext], None]:
    """The compiled loop: C decodes and calls the registered devices' read/write directly."""

    def loop(ctx: LoopContext) -> None:
        m = ctx.machine
        pio, mmio = m.pio_bus.find(SYNC_PORT), m.mmio_bus.find(SYNC_MMIO)
        assert pio is not None and mmio is not None
        driver, cpu = ctx.driver, ctx.cpu
        module.loop(
            ctx.fd,
            abi.buffer_address(m.vcpus[cpu].run_page),
            CTRL_PORT,
            lambda _k: driver.control(cpu),
            SYNC_PORT,
            4,
            pio.device,
            SYNC_MMIO,
            DEVICE_SIZE,
            mmio.device,
        )

    return loop


Step = tuple[str, str, Callable[[LoopContext], None] | str]  # a loop, or "floor" / "broiler"

STEPS: list[Step] = [
    ("C floor", "broiler/bench/floor.c (column a)", "floor"),
    ("bare", "ioctl(fd, KVM_RUN) + reason + control check (column b)", bare_loop),
    ("+arg 0", "ioctl(fd, KVM_RUN, 0), as broiler calls it", bare_arg0),
    ("+decode", "all kvm_run fields broiler reads", with_decode),
    ("+lookup", "bus per-address dict", with_lookup),
    ("+region", "Region.read/write: straddle, 2 clock reads, stats, device", with_region),
    ("copy", "VcpuThread._loop's IO/MMIO code, in the bare harness", broiler_copy),
    ("broiler", "broiler's real vCPU loop under Machine.run (column c)", "broiler"),
]


def run_ladder(
    opts: Any, steps: list[Step] | None = None, path_keys: tuple[str, ...] = LADDER_PATHS
) -> dict[str, object]:
    """Every step's per-operation cost per path, the steps interleaved round by round like the bench."""
    with tempfile.TemporaryDirectory(prefix="broiler-ladder-") as tmp:
        floor_exe: Path | None = None
        try:
            floor_exe = build_floor(Path(tmp))
        except FloorUnavailable:
            pass
        if steps is None:
            steps = [s for s in STEPS if s[2] != "floor" or floor_exe is not None]
            module = build_fastpath(Path(tmp))
            if module is not None:
                steps.append(
                    (
                        "compiled",
                        "broiler/bench/fastpath.c: C decode, then the device's Python read/write (experiment)",
                        compiled(module),
                    )
                )
        return _run_steps(opts, steps, path_keys, floor_exe)


def _run_steps(opts: Any, steps: list[Step], path_keys: tuple[str, ...], floor_exe: Path | None) -> dict[str, object]:
    paths = [PATH_BY_KEY[k] for k in path_keys]
    samples: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in steps}
    for rep in range(opts.reps):
        for name, _, loop in steps:
            if opts.progress:
                opts.progress(f"breakdown round {rep + 1}/{opts.reps}: {name}")
            batches = schedule(paths, opts.n1, opts.n2, 1)
            if loop == "floor":
                if floor_exe is None:
                    continue
                times = run_floor(floor_exe, packaged_guest(GUEST_NAME), opts.mem_size, 1, batches, [])["batches_ns"]
            elif loop == "broiler":
                times = run_broiler(batches, paths, 1, opts.mem_size).times_ns
            else:
                assert callable(loop)
                times = run_bare(batches, paths, 1, opts.mem_size, loop=loop).times_ns
            for key, values in per_op_us(batches, times).items():  # type: ignore[arg-type]
                samples[name].setdefault(key, []).extend(values)
    rows = []
    for name, what, _ in steps:
        row: dict[str, object] = {"step": name, "what": what}
        for key in path_keys:
            s = summarize(samples[name].get(key, []))
            row[key] = s.as_json() if s else None
        rows.append(row)
    return {"paths": list(path_keys), "steps": rows}


def render_ladder(ladder: dict[str, Any]) -> list[str]:
    keys = ladder["paths"]
    # The minimum, not the median: other load on the machine only ever adds time, and the steps differ
    # by tenths of a µs while a busy neighbour moves single runs by whole µs.
    lines = [
        "",
        "breakdown of a sync exit (µs per operation, best repetition; Δ = this step minus the one above;",
        "and × the C floor",
        f"{'step':<10} " + " ".join(f"{k:>24}" for k in keys) + "  what",
    ]
    previous: dict[str, float] = {}
    floor: dict[str, float] = {}
    for row in ladder["steps"]:
        cells = []
        for k in keys:
            s = row.get(k)
            if not s:
                cells.append(f"{'n/a':>24}")
                continue
            m = s["min_us"]
            if row["step"] == "C floor":
                floor[k] = m
            delta = f" ({m - previous[k]:+.2f})" if k in previous and row["step"] != "C floor" else ""
            ratio = f" {m / floor[k]:.2f}×" if k in floor else ""
            cells.append(f"{m:.2f}{delta}{ratio}".rjust(24))
            previous[k] = m
        lines.append(f"{row['step']:<10} " + " ".join(cells) + f"  {row['what']}")
    return lines
