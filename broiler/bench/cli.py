"""``broiler bench``: hooked into broiler/frontend/parser.py with ``add_parser(subparsers)`` and into
frontend/cli.py with ``run(args)``, whose errors frontend/cli.main turns into exit statuses."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import exitcodes
from ..core.memory import parse_size
from ..errors import ConfigError
from ..frontend.argtypes import positive
from ..inputs import check_output
from .guest import PATHS
from .plot import PlotUnavailable, check_available, plot
from .runner import BenchOptions, run_bench
from .snapshot import bench_snapshot, render_snapshot
from .table import render
from .virtio import render_virtio, run_virtio_bench

QUICK_HELP = "small N and 3 repetitions, for CI (seconds, not minutes; timings are rough)"


_positive_int = positive(int)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="cost per guest operation of every IO path, beside a C floor",
        description="One table: per IO path, µs per guest operation for a C KVM_RUN "
        "loop (the floor), a bare Python loop and broiler (compiled and pure-Python loop), with ratios; where "
        "qemu-system-x86_64 is installed, a self-timed guest under broiler and QEMU side by side; plus start-up "
        "time and 1-vs-2-vCPU scaling. See docs/bench.md.",
    )
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw bars and the doorbell histogram (matplotlib)")
    p.add_argument("--reps", type=_positive_int, metavar="N", help="repetitions (default 5, quick 3)")
    p.add_argument("--n1", type=_positive_int, metavar="N", help="iterations of the short batch")
    p.add_argument("--n2", type=_positive_int, metavar="N", help="iterations of the long batch (> n1)")
    p.add_argument("--paths", metavar="KEYS", help="comma-separated subset of: " + ",".join(x.key for x in PATHS))
    p.add_argument("--no-scaling", action="store_true", help="skip the 1-vs-2-vCPU run")
    p.add_argument("--no-steps", action="store_true", help="skip the steps from the C floor to broiler")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what a batch's time is: wall time (default) or the vCPU thread's CPU time, which time spent "
        "waiting for a core does not inflate (sync rows on a busy machine; not for scaling or round trips)",
    )
    p.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="only: snapshot and restore times of a --startup-mem guest, 200 MiB touched",
    )
    p.add_argument("--startup-mem", default="4G", metavar="SIZE", help="guest RAM of the start-up VM (4G)")
    p.add_argument("-v", "--verbose", action="store_true", help="progress lines on stderr")
    p.add_argument(
        "--virtio",
        action="store_true",
        help="instead: virtio-blk IOPS and MB/s of the bench kernel under broiler and, where installed, QEMU",
    )
    p.add_argument("--virtio-requests", type=_positive_int, metavar="N", help="requests per test (default 5000)")
    p.add_argument("--virtio-ms", type=_positive_int, metavar="MS", help="time bound per test (default 10000)")
    p.add_argument(
        "--no-qemu",
        action="store_true",
        help="leave QEMU out: no self-timed columns (c′, e) in the IO table; --virtio runs broiler only",
    )
    return p


def options(args: argparse.Namespace) -> Any:
    opts = BenchOptions.quick_defaults() if args.quick else BenchOptions()
    if args.reps:
        opts.reps = args.reps
    if args.n1:
        opts.n1 = args.n1
    if args.n2:
        opts.n2 = args.n2
    if opts.n2 <= opts.n1:
        raise ConfigError(f"--n2 ({opts.n2}) must be larger than --n1 ({opts.n1})")
    if args.paths:
        wanted = [k.strip() for k in args.paths.split(",") if k.strip()]
        unknown = sorted(set(wanted) - {p.key for p in PATHS})
        if unknown:
            raise ConfigError(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(p.key for p in PATHS)}")
        opts.paths = wanted
    opts.scaling = not args.no_scaling
    opts.steps = not args.no_steps
    opts.clock = args.clock
    opts.startup = not args.no_startup
    opts.qemu = not args.no_qemu
    opts.startup_mem = parse_size(args.startup_mem, what="--startup-mem")
    if args.verbose:
        opts.progress = lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)
    return opts


def run(args: argparse.Namespace) -> int:
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        if path is not None:
            check_output(path, what)  # before minutes of measuring, not after
    if args.virtio:
        return run_virtio(args)
    if args.snapshot:
        row = bench_snapshot(parse_size(args.startup_mem, what="--startup-mem"))
        print("\n".join(render_snapshot(row)))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(row, f, indent=1)
        return exitcodes.OK

    opts = options(args)
    plot_ok = True
    if args.plot:
        try:
            check_available()
        except PlotUnavailable as exc:  # say so now, run the rest
            print(f"broiler: {exc}", file=sys.stderr)
            plot_ok = False
    doc = run_bench(opts)  # ConfigError and KvmUnavailable become statuses in frontend/cli.main
    print("\n".join(render(doc)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if args.plot and plot_ok:
        plot(doc, args.plot)
    return exitcodes.OK


def run_virtio(args: argparse.Namespace) -> int:
    requests = args.virtio_requests or (200 if args.quick else 5000)
    ms = args.virtio_ms or (2000 if args.quick else 10000)
    runs = run_virtio_bench(requests=requests, ms=ms, with_qemu=not args.no_qemu)
    print(f"virtio-blk bench kernel, modern transport, MSI-X; {requests} requests or {ms} ms per test")
    print("\n".join(render_virtio(runs)))
    if args.json:
        doc = [{"vmm": r.vmm, "problem": r.problem,
                "results": [{"test": t, "qd": q, "iops": v[0], "mbps": v[1]} for (t, q), v in r.results.items()]}
               for r in runs]  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return exitcodes.OK if runs[0].problem is None else exitcodes.GUEST_FATAL
