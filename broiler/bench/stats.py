"""From batch times to µs per operation: ΔN per repetition, then median and spread."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .guest import Batch


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    low: float
    high: float
    samples: list[float]

    @property
    def spread(self) -> float:
        """Half the min–max range: the ± the table prints."""
        return (self.high - self.low) / 2

    def as_json(self) -> dict[str, object]:
        return {
            "median_us": round(self.median, 4),
            "min_us": round(self.low, 4),
            "max_us": round(self.high, 4),
            "samples_us": [round(s, 4) for s in self.samples],
        }


def summarize(samples: list[float]) -> Summary | None:
    if not samples:
        return None
    return Summary(statistics.median(samples), min(samples), max(samples), list(samples))


def per_op_us(batches: list[Batch], times_ns: list[list[int]]) -> dict[str, list[float]]:
    """µs per guest operation on one vCPU, per path and repetition: (t2 - t1) / (n2 - n1).

    A batch's time is the slowest vCPU's (all vCPUs start together), so with several vCPUs this is the
    wall time per operation of each vCPU while all of them run."""
    t1: dict[tuple[str, int], tuple[int, int]] = {}
    out: dict[str, list[float]] = {}
    for b, cpu_times in zip(batches, times_ns, strict=True):
        t = max(cpu_times)
        if b.tag == "n1":
            t1[(b.path, b.rep)] = (b.n, t)
        elif b.tag == "n2":
            n1, first = t1.pop((b.path, b.rep))
            out.setdefault(b.path, []).append((t - first) / (b.n - n1) / 1000)
    return out
