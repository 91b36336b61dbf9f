"""Run the whole bench in one process and return one JSON-able document (see table.py for its shape).

Each repetition is a *round*: the C floor, the bare loop and broiler (its compiled loop, then its
pure-Python loop) each run one VM with every path (one warm-up batch, then N1 and N2 per path).
Rounds interleave the hosts, so a slow minute of the machine lands on all columns alike; only
numbers from one invocation should be compared.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.memory import GiB, MiB
from ..guests import packaged_guest
from ..vmm.machine import Machine, MachineConfig
from . import floor, hosts, steps
from .driver import BatchDriver
from .guest import (
    COALESCED,
    COALESCED_MMIO,
    COALESCED_SIZE,
    CTRL_PORT,
    DOORBELL_PORT,
    IOEVENTFD,
    IOEVENTFD_MMIO,
    IOEVENTFD_PORT,
    PATH_BY_KEY,
    PATHS,
    PINGPONG,
    SCALING_PATH,
    SYNC,
    Batch,
    schedule,
)
from .hosts import ControlDevice
from .qemu_io import SelfTimedColumns
from .stats import per_op_us, summarize

IMPLS = ("floor", "bare", "broiler", "broiler_py")
READER = "floor_reader"  # the C floor with a thread reading every ioeventfd kick (ioeventfd rows only)
SCHEMA = "broiler-bench/2"
MAX_RTT_SAMPLES = 5000


@dataclass
class BenchOptions:
    quick: bool = False
    n1: int = 2000
    n2: int = 12000
    reps: int = 5
    mem_size: int = 256 * MiB
    startup_mem: int = 4 * GiB
    startup_reps: int = 3
    paths: list[str] = field(default_factory=lambda: [p.key for p in PATHS])
    scaling: bool = True
    steps: bool = True
    clock: str = "wall"  # or "cpu": each vCPU thread's CPU time (driver.CLOCKS)
    startup: bool = True
    qemu: bool = True  # columns (c′) and (e): the self-timed guest under broiler and QEMU (qemu_io.py)
    progress: Callable[[str], None] | None = None

    @classmethod
    def quick_defaults(cls) -> BenchOptions:
        return cls(quick=True, n1=100, n2=600, reps=3, startup_reps=1)


def _floor_zones(kinds: set[str], *, reader: bool = False) -> list[str]:
    zones = []
    if IOEVENTFD in kinds:
        tail = " reader" if reader else ""
        zones += [f"ioeventfd pio {IOEVENTFD_PORT:#x} 4{tail}", f"ioeventfd mmio {IOEVENTFD_MMIO:#x} 4{tail}"]
    if COALESCED in kinds:
        zones.append(f"coalesced {COALESCED_MMIO:#x} {COALESCED_SIZE:#x}")
    if PINGPONG in kinds:
        zones.append(f"doorbell {DOORBELL_PORT:#x}")
    return zones


class Bench:
    def __init__(self, opts: BenchOptions, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.image = packaged_guest("bench_io")
        self.notes: list[str] = []
        self.floor_exe: Path | None = None
        try:
            self.floor_exe = floor.build(workdir)
        except floor.FloorUnavailable as exc:
            self.notes.append(str(exc))
        self.python_missing = _why_no_python_column()
        if self.python_missing:
            self.notes.append(f"column (d): {self.python_missing}")
        self.self_timed = SelfTimedColumns(opts.paths, opts.n1, opts.n2, with_qemu=opts.qemu)
        if opts.clock == "cpu" and opts.qemu:
            self.notes.append("--clock cpu: columns c′ and e time themselves in the guest (TSC: wall time)")
        self.own: dict[str, list[int]] = {}  # path -> histogram of broiler's own time per exit (compiled loop)
        self.inproc: steps.InProcessFloor | None = None
        if opts.steps and self.floor_exe is not None:
            try:
                self.inproc = steps.InProcessFloor(workdir)
            except (floor.FloorUnavailable, OSError) as exc:
                self.notes.append(f"steps: not measured: {exc}")

    def say(self, text: str) -> None:
        if self.opts.progress is not None:
            self.opts.progress(text)

    def run_host(self, impl: str, paths: list, cpus: int, reps: int) -> tuple[list[Batch], list[list[int]], list[int]]:
        batches = schedule(paths, self.opts.n1, self.opts.n2, reps)
        if impl in steps.STEPS:
            assert self.inproc is not None
            out = self.inproc.run(impl, self.image, self.opts.mem_size, batches, self._clock_directive())
            return batches, out["batches_ns"], []  # type: ignore[return-value]
        if impl in ("floor", READER):
            assert self.floor_exe is not None
            zones = _floor_zones({p.kind for p in paths}, reader=impl == READER) + self._clock_directive()
            out = floor.run_floor(self.floor_exe, self.image, self.opts.mem_size, cpus, batches, zones)
            return batches, out["batches_ns"], []  # type: ignore[return-value]
        if impl == "bare":
            result = hosts.run_bare(batches, paths, cpus, self.opts.mem_size, self.opts.clock)
        else:
            result = hosts.run_broiler(
                batches, paths, cpus, self.opts.mem_size, pure_python=impl == "broiler_py", clock=self.opts.clock
            )
            for b, hist in zip(batches, result.own_per_batch, strict=False):
                if b.tag in ("n1", "n2") and hist:
                    total = self.own.setdefault(b.path, [0] * len(hist))
                    self.own[b.path] = [x + y for x, y in zip(total, hist, strict=True)]
        stamps = result.doorbell_stamps_ns
        return batches, result.times_ns, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    def _clock_directive(self) -> list[str]:
        return [f"clock {self.opts.clock}"] if self.opts.clock != "wall" else []

    def impls_for(self, paths: list, *, with_steps: bool = False) -> dict[str, list]:
        """Which paths each host runs this time (the steps: the sync paths only, after the floor)."""
        out: dict[str, list] = {}
        for impl in IMPLS:
            if (impl == "floor" and self.floor_exe is None) or (impl == "broiler_py" and self.python_missing):
                continue
            out[impl] = list(paths)
            if impl != "floor" or not with_steps:
                continue
            sync = [p for p in paths if p.kind == SYNC]
            if self.inproc is not None and sync:
                out.update((step, sync) for step in steps.STEPS)
            kicked = [p for p in paths if p.kind == IOEVENTFD]
            if kicked:
                out[READER] = kicked
        return out

    # -- the three sections -----------------------------------------------------------------------
    def paths_section(self) -> tuple[list[dict[str, object]], list[float]]:
        paths = [p for p in PATHS if p.key in self.opts.paths]
        samples: dict[str, dict[str, list[float]]] = {impl: {} for impl in (*IMPLS, *steps.STEPS, READER)}
        rtts: list[float] = []
        plan = self.impls_for(paths, with_steps=True)
        for rep in range(self.opts.reps):
            for impl, impl_paths in plan.items():
                self.say(f"round {rep + 1}/{self.opts.reps}: {impl} ({len(impl_paths)} paths)")
                batches, times, deltas = self.run_host(impl, impl_paths, 1, 1)
                for key, values in per_op_us(batches, times).items():
                    samples[impl].setdefault(key, []).extend(values)
                rtts += [d / 1000 for d in deltas if d < 1_000_000]  # gaps across batches are not round trips
            self.self_timed.run_round(self.say, f"round {rep + 1}/{self.opts.reps}")
        rows = []
        for p in paths:
            row: dict[str, object] = {"key": p.key, "label": p.label}
            missing: dict[str, str] = {}
            for impl in IMPLS:
                s = summarize(samples[impl].get(p.key, []))
                row[impl] = s.as_json() if s else None
                if s is None:
                    missing[impl] = self._why_missing(impl)
            row["missing"] = missing
            own = _histogram_summary(self.own.get(p.key, []), hosts.OWN_BUCKET_NS)
            if own is not None:
                row["broiler_own_us"] = own
            if p.kind == SYNC and self.inproc is not None:
                row["steps"] = {step: _summary_json(samples[step].get(p.key, [])) for step in steps.STEPS}
            if p.kind == IOEVENTFD and samples[READER].get(p.key):
                row[READER] = _summary_json(samples[READER][p.key])
                row["c_over_reader"] = _ratio(row["broiler"], row[READER])
            row["c_over_a"] = _ratio(row["broiler"], row["floor"])
            row["c_over_b"] = _ratio(row["broiler"], row["bare"])
            row["d_over_a"] = _ratio(row["broiler_py"], row["floor"])
            self.self_timed.fill_row(row)
            rows.append(row)
        return rows, rtts[:MAX_RTT_SAMPLES]

    def _why_missing(self, impl: str) -> str:
        if impl == "floor" and self.floor_exe is None:
            return "n/a (no C floor)"
        if impl == "broiler_py" and self.python_missing:
            return "n/a (= column c)"
        return "n/a"

    def scaling_section(self) -> dict[str, object]:
        path = PATH_BY_KEY[SCALING_PATH]
        samples: dict[str, dict[int, list[float]]] = {}
        plan = self.impls_for([path])
        for rep in range(self.opts.reps):
            for impl in plan:
                for cpus in (1, 2):
                    self.say(f"scaling round {rep + 1}/{self.opts.reps}: {impl}, {cpus} vCPU(s)")
                    batches, times, _ = self.run_host(impl, [path], cpus, 1)
                    samples.setdefault(impl, {}).setdefault(cpus, []).extend(per_op_us(batches, times)[path.key])
        impls: dict[str, object] = {}
        for impl, by_cpus in samples.items():
            one, two = summarize(by_cpus[1]), summarize(by_cpus[2])
            assert one is not None and two is not None
            impls[impl] = {"1": one.as_json(), "2": two.as_json(), "speedup": round(2 * one.median / two.median, 3)}
        return {"path": path.key, "label": path.label, "impls": impls}

    def startup_section(self) -> dict[str, object]:
        out: dict[str, object] = {"mem": self.opts.startup_mem}
        if self.floor_exe is not None:
            runs = []
            for _ in range(self.opts.startup_reps):
                res = floor.run_floor(self.floor_exe, self.image, self.opts.startup_mem, 1, [], [])
                startup_ns = res["startup_ns"]
                assert isinstance(startup_ns, dict)  # the floor's JSON line: phase -> ns
                runs.append({k: v / 1e6 for k, v in startup_ns.items()})
            out["floor"] = _startup_summary(runs, ("vm", "memory", "vcpus", "first_exit"))
        runs = [self.broiler_startup() for _ in range(self.opts.startup_reps)]
        out["broiler"] = _startup_summary(runs, ("machine", "load", "first_exit"))
        return out

    def broiler_startup(self) -> dict[str, float]:
        """Machine (KVM, VM, 4 GiB map, devices, vCPUs), then the loader, then the guest's first exit."""
        self.say(f"start-up: broiler, {self.opts.startup_mem >> 20} MiB")
        t0 = time.perf_counter_ns()
        m = Machine(MachineConfig(mem_size=self.opts.startup_mem, serial_output=lambda _b: None))
        try:
            t1 = time.perf_counter_ns()
            m.load_flat64(self.image)
            t2 = time.perf_counter_ns()
            driver = BatchDriver(m.memory.view, [], 1)
            m.add_pio(CTRL_PORT, 4, ControlDevice(driver))  # registered after t2: not part of start-up
            t3 = time.perf_counter_ns()
            m.run(timeout=60)
            driver.release()
            first = driver.first_exit_ns - t3
        finally:
            m.close()
        return {
            "machine": (t1 - t0) / 1e6,
            "load": (t2 - t1) / 1e6,
            "first_exit": first / 1e6,
            "total": (t2 - t0 + first) / 1e6,
        }

    def run(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "schema": SCHEMA,
            "quick": self.opts.quick,
            "n1": self.opts.n1,
            "n2": self.opts.n2,
            "reps": self.opts.reps,
            "clock": self.opts.clock,
            "mem": self.opts.mem_size,
            "host": host_info(),
        }
        started = time.monotonic()
        doc["paths"], doc["doorbell_rtt_us"] = self.paths_section()
        doc["scaling"] = self.scaling_section() if self.opts.scaling else None
        doc["startup"] = self.startup_section() if self.opts.startup else None
        doc["qemu"] = self.self_timed.section()
        doc["notes"] = self.notes + self.self_timed.all_notes()
        doc["seconds"] = round(time.monotonic() - started, 1)
        return doc


def _why_no_python_column() -> str | None:
    """Column (d) is broiler's pure-Python loop; it only differs from (c) when (c) runs compiled."""
    if os.environ.get("BROILER_PURE_PYTHON") == "1":
        return "not measured: BROILER_PURE_PYTHON=1 makes column (c) the pure-Python loop already"
    if not hosts.compiled_loop_built():
        return "not measured: broiler's compiled loop is not built here, so column (c) is the pure-Python loop"
    return None


def _histogram_summary(hist: list[int], bucket_ns: int) -> dict[str, float] | None:
    """Median and 90th percentile (µs, bucket middles) of a histogram; the last bucket is "longer"."""
    total = sum(hist)
    if not total:
        return None
    out: dict[str, float] = {"samples": total}
    for name, fraction in (("median_us", 0.5), ("p90_us", 0.9)):
        seen, target = 0, fraction * total
        for i, n in enumerate(hist):
            seen += n
            if seen >= target:
                out[name] = round((i + 0.5) * bucket_ns / 1000, 4)
                break
    return out


def _summary_json(samples: list[float]) -> dict[str, object] | None:
    s = summarize(samples)
    return s.as_json() if s else None


def _ratio(c: object, a: object) -> float | None:
    if isinstance(c, dict) and isinstance(a, dict) and a["median_us"]:
        return round(c["median_us"] / a["median_us"], 3)
    return None


def _startup_summary(runs: list[dict[str, float]], phases: tuple[str, ...]) -> dict[str, object]:
    s = summarize([r["total"] for r in runs])
    assert s is not None
    phase_medians = {p: round(summarize([r[p] for r in runs]).median, 3) for p in phases}  # type: ignore[union-attr]
    return {
        "median_ms": round(s.median, 3),
        "min_ms": round(s.low, 3),
        "max_ms": round(s.high, 3),
        "phases_ms": phase_medians,
    }


def host_info() -> dict[str, object]:
    cc = floor.compiler()
    version = None
    if cc is not None:
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[
                0
            ]
        except (OSError, subprocess.SubprocessError, IndexError):
            version = None
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cc": version,
    }


def run_bench(opts: BenchOptions) -> dict[str, object]:
    with floor.temp_build_dir() as tmp:
        return Bench(opts, Path(tmp)).run()
