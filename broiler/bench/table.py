"""The bench document (runner.py) as the text table `broiler bench` prints.

The document (also what ``--json`` writes):

    schema, quick, n1, n2, reps, mem, host{...}, seconds, notes[str]
    paths[]: key, label, floor|bare|broiler|broiler_py|broiler_st|qemu: {median_us, min_us, max_us, samples_us}
             or null, missing{impl: why}, c_over_a, c_over_b, d_over_a, cst_over_e
    qemu: {binary, version, kernel, commands{}, tsc_khz, tsc_source, guest_tsc_hz{}, problems{}} or null
          (null: --no-qemu, and the table has no (c′)/(e) columns)
    scaling: {path, label, impls{impl: {"1": summary, "2": summary, speedup}}} or null
    startup: {mem, floor|broiler: {median_ms, min_ms, max_ms, phases_ms{}}} or null
    doorbell_rtt_us[]: broiler's kick-to-kick round trips (for the histogram)
"""

from __future__ import annotations

from typing import Any

from ..core.memory import format_size

IMPL_LABELS = {
    "floor": "C floor (a)",
    "bare": "bare Python (b)",
    "broiler": "broiler (c)",
    "broiler_py": "broiler, Python (d)",
}
SCALING_LABELS = {"floor": "C floor", "bare": "bare Python", "broiler": "broiler", "broiler_py": "broiler, Python"}
RATIOS = (("c_over_a", "c/a"), ("c_over_b", "c/b"), ("d_over_a", "d/a"))
# The self-timed guest (qemu_io.py): broiler and QEMU each run io_bench.elf, which times itself with rdtsc.
QEMU_LABELS = {"broiler_st": "broiler self-timed (c′)", "qemu": "QEMU self-timed (e)"}
QEMU_RATIO = ("cst_over_e", "c′/e")
TARGET = 1.10
SYNC_KEYS = ("pio_out", "pio_in", "mmio_write", "mmio_read")


def _cell(summary: dict[str, Any] | None, missing: str | None = None) -> str:
    if summary is None:
        return missing or "n/a"
    return f"{summary['median_us']:.2f} ±{(summary['max_us'] - summary['min_us']) / 2:.2f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"broiler bench: µs per guest operation, median of {doc['reps']} repetitions "
        f"(± half the min–max range), ΔN = {doc['n2'] - doc['n1']} ({doc['n2']} − {doc['n1']})"
        + (" [quick]" if doc.get("quick") else "")
        + (" [clock: vCPU thread CPU time]" if doc.get("clock") == "cpu" else "")
    ]
    with_qemu = doc.get("qemu") is not None
    impls = {**IMPL_LABELS, **(QEMU_LABELS if with_qemu else {})}
    ratios = (*RATIOS, *((QEMU_RATIO,) if with_qemu else ()))
    widths = (28, *(20,) * len(IMPL_LABELS), *(23,) * (len(impls) - len(IMPL_LABELS)), *(5,) * len(ratios))
    header = ("path", *impls.values(), *(label for _, label in ratios))
    lines.append(_row(header, widths))
    lines.append("-" * (sum(widths) + len(widths) - 1))
    for row in doc["paths"]:
        missing = row.get("missing", {})
        cells = [_cell(row.get(impl), missing.get(impl)) for impl in impls]
        lines.append(_row((row["label"], *cells, *(_ratio(row.get(key)) for key, _ in ratios)), widths))
    for key, label in (("c_over_a", "c/a"), ("d_over_a", "d/a")):
        sync = [r for r in doc["paths"] if r["key"] in SYNC_KEYS and r.get(key) is not None]
        if sync:
            verdict = ", ".join(f"{r['key']} {r[key]:.2f}{' ✓' if r[key] <= TARGET else ''}" for r in sync)
            lines.append(f"sync paths {label} (target ≤ {TARGET:.2f}): {verdict}")
    kicked = [r for r in doc["paths"] if r.get("floor_reader") and r.get("c_over_reader") is not None]
    if kicked:
        verdict = ", ".join(
            f"{r['key']} {r['floor_reader']['median_us']:.2f} → c/a' {r['c_over_reader']:.2f}"
            f"{' ✓' if r['c_over_reader'] <= TARGET else ''}"
            for r in kicked
        )
        lines.append(f"ioeventfd rows against a C floor whose thread reads every kick (a'): {verdict}")
    lines += _qemu(doc)
    owned = [r for r in doc["paths"] if r.get("broiler_own_us") is not None and r["key"] in SYNC_KEYS]
    if owned:
        lines.append(
            "broiler's own time per exit, KVM_RUN's return → the next KVM_RUN (compiled loop, 1 exit in 64 timed; "
            "median/p90 µs): "
            + ", ".join(
                f"{r['key']} {r['broiler_own_us']['median_us']:.2f}/{r['broiler_own_us']['p90_us']:.2f}" for r in owned
            )
        )
    lines += _steps(doc["paths"])
    lines += _latency(doc.get("doorbell_rtt_us") or [])
    lines += _scaling(doc.get("scaling"))
    lines += _startup(doc.get("startup"))
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    return lines


def _qemu(doc: dict[str, Any]) -> list[str]:
    """How the self-timed columns were taken, and c′/e for the rows that have both."""
    info = doc.get("qemu")
    if not info or not info.get("binary"):
        return []
    rate = f"{info['tsc_khz']} kHz" if info.get("tsc_khz") else "rate"
    lines = [
        f"columns c′ and e: {info['kernel']} times itself (rdtsc, TSC {rate} from {info['tsc_source']}) "
        f"under broiler and under {info.get('version') or info['binary']}"
    ]
    rows = [r for r in doc["paths"] if r.get(QEMU_RATIO[0]) is not None]
    if rows:
        lines.append("broiler / QEMU (c′/e): " + ", ".join(f"{r['key']} {r[QEMU_RATIO[0]]:.2f}" for r in rows))
    return lines


STEP_ROWS = (
    ("floor", "(a) C floor, its own process"),
    ("inproc", "the same loop inside this Python process"),
    ("gil", "+ GIL released/re-taken per KVM_RUN"),
    ("kick", "+ broiler's kick signal handler"),
    ("events", "+ broiler's event-loop thread alive"),
    ("bare", "(b) bare Python loop (fcntl.ioctl)"),
    ("broiler", "(c) broiler, compiled loop"),
    ("broiler_py", "(d) broiler, pure-Python loop"),
)


def _steps(rows: list[dict[str, Any]]) -> list[str]:
    """From the floor to broiler, one ingredient at a time (bench/steps.py): µs per exit and the
    difference to the line above, per sync path."""
    measured = [r for r in rows if r.get("steps")]
    if not measured:
        return []
    widths = (42, *(14,) * len(measured))
    lines = [
        "",
        "steps from the C floor to broiler: µs per exit (Δ to the line above); every step runs floor.c's loop",
        _row(("step", *(r["key"] for r in measured)), widths),
    ]
    previous: list[float | None] = [None] * len(measured)
    for key, label in STEP_ROWS:
        cells = []
        for i, r in enumerate(measured):
            s = r["steps"].get(key) if key in r["steps"] else r.get(key)
            if s is None:
                cells.append("—")
                continue
            now = s["median_us"]
            delta = "" if previous[i] is None else f" ({now - previous[i]:+.2f})"  # type: ignore[operator]
            cells.append(f"{now:.2f}{delta}")
            previous[i] = now
        lines.append(_row((label, *cells), widths))
    return lines


def _latency(rtts: list[float]) -> list[str]:
    """broiler's doorbell→handler→guest round trips, back to back: median and p99 (also the --plot histogram)."""
    if not rtts:
        return []
    ordered = sorted(rtts)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return [
        f"broiler's doorbell→handler round trips: median {ordered[len(ordered) // 2]:.2f} µs, "
        f"p99 {p99:.2f} µs, max {ordered[-1]:.2f} µs ({len(ordered)} round trips)"
    ]


def _row(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    first, *rest = cells
    return " ".join([f"{first:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(rest, widths[1:], strict=True))])


def _scaling(scaling: dict[str, Any] | None) -> list[str]:
    if not scaling:
        return []
    lines = [
        "",
        f"scaling of {scaling['label']}: µs per operation on each vCPU while all run "
        "(speed-up = total throughput with 2 vCPUs / with 1; ideal 2.00)",
    ]
    widths = (28, 20, 20, 10)
    lines.append(_row(("host", "1 vCPU", "2 vCPUs", "speed-up"), widths))
    for impl, entry in scaling["impls"].items():
        lines.append(
            _row(
                (SCALING_LABELS.get(impl, impl), _cell(entry["1"]), _cell(entry["2"]), f"{entry['speedup']:.2f}×"),
                widths,
            )
        )
    return lines


def _startup(startup: dict[str, Any] | None) -> list[str]:
    if not startup:
        return []
    lines = ["", f"start-up of a {format_size(startup['mem'])} VM, ms (open /dev/kvm … the guest's first exit)"]
    for impl in ("floor", "broiler"):
        entry = startup.get(impl)
        if not entry:
            continue
        phases = ", ".join(f"{name.replace('_', ' ')} {ms:.2f}" for name, ms in entry["phases_ms"].items())
        lines.append(
            f"  {SCALING_LABELS[impl]:<12} {entry['median_ms']:8.2f}  "
            f"[{entry['min_ms']:.2f}–{entry['max_ms']:.2f}]  ({phases})"
        )
    return lines
