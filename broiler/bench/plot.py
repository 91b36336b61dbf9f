"""``--plot FILE.png``: bars with error bars per path and host, and the doorbell round-trip histogram.

matplotlib is optional: without it ``PlotUnavailable`` carries the one line to print."""

from __future__ import annotations

from typing import Any

from .table import IMPL_LABELS, QEMU_LABELS


class PlotUnavailable(Exception):
    pass


def check_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib (pip install matplotlib); the table and the JSON are unaffected"
        ) from None


def plot(doc: dict[str, Any], path: str) -> None:
    check_available()
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    rows = doc["paths"]
    rtts = doc.get("doorbell_rtt_us") or []
    fig, axes = plt.subplots(1, 2 if rtts else 1, figsize=(14 if rtts else 10, 5), squeeze=False)
    ax = axes[0][0]
    labels = {**IMPL_LABELS, **(QEMU_LABELS if doc.get("qemu") else {})}  # (c′), (e) unless --no-qemu
    width = 0.8 / len(labels)
    for i, impl in enumerate(labels):
        xs, ys, lo, hi = [], [], [], []
        for j, row in enumerate(rows):
            s = row.get(impl)
            if s:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ys.append(s["median_us"])
                lo.append(s["median_us"] - s["min_us"])
                hi.append(s["max_us"] - s["median_us"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=labels[impl])
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("µs per guest operation (median, min–max)")
    ax.set_title("broiler bench")
    ax.legend()
    if rtts:
        ax2 = axes[0][1]
        ordered = sorted(rtts)
        top = ordered[int(0.99 * (len(ordered) - 1))]  # a few preempted round trips would squash the rest
        outliers = sum(r > top for r in ordered)
        ax2.hist(rtts, bins=60, range=(ordered[0], top))
        ax2.set_xlabel("µs, kick to kick (doorbell → handler → guest → next kick)")
        ax2.set_ylabel("count")
        ax2.set_title(f"broiler doorbell round trips ({outliers} above {top:.0f} µs not shown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
