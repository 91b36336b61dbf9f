"""``broiler replay FILE [--device ...] [--plot F.png]``: the offline half of record/replay (vmm/replay.py).

Exit status: 0 when the devices did exactly what the recording says, ``exitcodes.DIVERGED`` (16) when they
did not, 2 for a file that is missing, truncated, corrupt or not a recording (one line, no traceback).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import exitcodes
from ..errors import ConfigError
from ..inputs import check_input
from ..vmm import recording as rec
from ..vmm.replay import Replayer, ReplayResult, replay_config


def load_pyplot() -> Any:
    """matplotlib's pyplot, or None: an optional extra (pip install broiler[plot]) that only --plot needs.
    Imported here, not at module top, because it costs ~0.4 s and every ``broiler`` command imports this."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return None
    return pyplot


def cmd_replay(args: argparse.Namespace) -> int:
    check_input(args.file, "recording")
    pyplot = None if args.plot is None else load_pyplot()
    if args.plot is not None and pyplot is None:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib (or broiler[plot])")
    t0 = time.perf_counter()
    try:
        with open(args.file, "rb") as f:
            header = rec.read_header(f, args.file)
            replayer = Replayer(replay_config(header, args.user_devices), show=args.show)
            ending = rec.Ending()
            result = replayer.run(rec.read_events(f, args.file, ending))
    except OSError as exc:
        raise ConfigError(f"cannot read recording {args.file!r}: {exc.strerror or exc}") from None
    elapsed = time.perf_counter() - t0
    for divergence in result.first:
        print(divergence.describe())
    if result.divergences > len(result.first):
        print(f"... and {result.divergences - len(result.first)} more")
    if ending.cut_by_limit:
        print("the recording was cut by its --record-limit: the run went on past its last event")
    print(_summary(header, result, elapsed))
    if args.plot is not None:
        plot_accesses(pyplot, result, args.plot)
    return exitcodes.DIVERGED if result.divergences else exitcodes.OK


def _summary(header: dict[str, Any], result: ReplayResult, elapsed: float) -> str:
    n = result.divergences
    verdict = "no divergence" if not n else f"{n} divergence{'s' if n > 1 else ''}"
    return (
        f"replayed {result.events} events ({result.causes} causes) of {header.get('guest', '?')!r} "
        f"(recorded by broiler {header.get('broiler', '?')}) in {elapsed:.3f} s: {verdict}"
    )


def plot_accesses(pyplot: Any, result: ReplayResult, path: str) -> None:
    """One row per device, one tick per access, time along the x axis."""
    names = sorted(result.per_device)
    figure, axes = pyplot.subplots(figsize=(10, 0.4 * len(names) + 1.5))
    for row, name in enumerate(names):
        times = [t / 1e6 for t in result.per_device[name]]
        axes.scatter(times, [row] * len(times), marker="|", s=60)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("seconds since the start of the recording")
    axes.set_title("device accesses over time")
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise ConfigError(f"cannot write --plot {path!r}: {exc.strerror or exc}") from None
    finally:
        pyplot.close(figure)
