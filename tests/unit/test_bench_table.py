"""`broiler bench` without KVM: ΔN arithmetic, the schedule, the table and the JSON shape from fake results."""

from __future__ import annotations

import json

from broiler.bench import floor, guest, table
from broiler.bench.stats import per_op_us, summarize
from broiler.boot.flat64 import AP_STACK_STRIDE, STACK_TOP, flat64_entry_state


def _summary(median: float, low: float | None = None, high: float | None = None) -> dict[str, object]:
    low = median if low is None else low
    high = median if high is None else high
    return {"median_us": median, "min_us": low, "max_us": high, "samples_us": [low, median, high]}


def fake_doc() -> dict[str, object]:
    rows = []
    for p in guest.PATHS:
        row: dict[str, object] = {
            "key": p.key,
            "label": p.label,
            "floor": _summary(8.0, 7.9, 8.1),
            "bare": _summary(8.4),
            "broiler": _summary(8.8, 8.6, 9.0),
            "broiler_py": _summary(9.6, 9.2, 9.8),
            "missing": {},
            "c_over_a": 1.1,
            "c_over_b": round(8.8 / 8.4, 3),
            "d_over_a": 1.2,
        }
        rows.append(row)
    rows[-1]["broiler"] = rows[-1]["broiler_py"] = None
    rows[-1]["missing"] = {"broiler": "n/a (not yet): no broiler.core.ioeventfd", "broiler_py": "n/a (= column c)"}
    rows[-1]["c_over_a"] = rows[-1]["c_over_b"] = rows[-1]["d_over_a"] = None
    return {
        "schema": "broiler-bench/1",
        "quick": True,
        "n1": 100,
        "n2": 600,
        "reps": 3,
        "mem": 256 << 20,
        "host": {"python": "3.11", "cc": None},
        "seconds": 1.0,
        "notes": ["no C compiler (cc) on this machine"],
        "paths": rows,
        "doorbell_rtt_us": [15.0, 16.0],
        "scaling": {
            "path": "pio_out",
            "label": "sync PIO out",
            "impls": {"floor": {"1": _summary(8.0), "2": _summary(9.0), "speedup": 1.778}},
        },
        "startup": {
            "mem": 4 << 30,
            "broiler": {
                "median_ms": 25.0,
                "min_ms": 24.0,
                "max_ms": 26.0,
                "phases_ms": {"machine": 22.0, "load": 1.0, "first_exit": 2.0},
            },
        },
    }


def test_table_has_one_row_per_path_with_every_column() -> None:
    lines = table.render(fake_doc())
    assert "C floor (a)" in lines[1] and "bare Python (b)" in lines[1] and "broiler (c)" in lines[1]
    assert "broiler, Python (d)" in lines[1]
    assert "c/a" in lines[1] and "c/b" in lines[1] and "d/a" in lines[1]
    for p in guest.PATHS:
        assert sum(line.startswith(p.label) for line in lines) == 1, p.label
    pio = next(line for line in lines if line.startswith("sync PIO out"))
    assert "8.00 ±0.10" in pio and "8.80 ±0.20" in pio and "9.60 ±0.30" in pio
    assert pio.split()[-3:] == ["1.10", "1.05", "1.20"]


def test_missing_cells_say_why_and_notes_are_printed() -> None:
    lines = table.render(fake_doc())
    last = next(line for line in lines if line.startswith(guest.PATHS[-1].label))
    assert "n/a (not yet)" in last and "—" in last
    assert "note: no C compiler (cc) on this machine" in lines


def test_target_line_scaling_and_startup_sections() -> None:
    text = "\n".join(table.render(fake_doc()))
    assert "sync paths c/a (target ≤ 1.10): pio_out 1.10 ✓" in text
    assert "sync paths d/a (target ≤ 1.10): pio_out 1.20," in text
    assert "scaling of sync PIO out" in text and "1.78×" in text
    assert "start-up of a 4G VM" in text and "machine 22.00" in text


def test_the_document_is_plain_json() -> None:
    doc = fake_doc()
    again = json.loads(json.dumps(doc))
    assert again == doc
    assert set(again["paths"][0]) >= {"key", "label", "floor", "bare", "broiler", "broiler_py", "c_over_a", "d_over_a"}


def test_delta_n_cancels_fixed_costs() -> None:
    paths = [guest.PATH_BY_KEY["pio_out"], guest.PATH_BY_KEY["loop"]]
    batches = guest.schedule(paths, 100, 600, 2)
    assert [b.tag for b in batches[:2]] == ["warmup", "warmup"]
    assert len(batches) == 2 + 2 * 2 * 2
    # 8 µs per op + 5 ms of fixed cost for pio_out; 1 µs per op + 1 ms for the loop; 2 vCPUs, slowest wins
    cost = {"pio_out": (8_000, 5_000_000), "loop": (1_000, 1_000_000)}
    times = [[cost[b.path][0] * b.n + cost[b.path][1], 0] for b in batches]
    result = per_op_us(batches, times)
    assert result == {"pio_out": [8.0, 8.0], "loop": [1.0, 1.0]}


def test_summary_median_and_spread() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert s is not None and s.median == 2.0 and s.spread == 1.0
    assert s.as_json()["samples_us"] == [3.0, 1.0, 2.0]
    assert summarize([]) is None


def test_floor_config_carries_the_loader_state_and_every_batch() -> None:
    batches = guest.schedule([guest.PATH_BY_KEY["mmio_read"]], 10, 20, 1)
    state = flat64_entry_state(0)
    text = floor.config_text(7, 256 << 20, state, 2, batches, ["coalesced 0xd0000300 0x100"])
    lines = text.splitlines()
    assert "mem_fd 7" in lines and "cpus 2" in lines and f"ctrl {guest.CTRL_PORT:#x}" in lines
    # the loader's own numbers, and the flat64 stack stride Machine.load_flat64 gives vCPU k
    cr0, cr3, cr4, efer, gdt_base, gdt_limit, rip, rsp, stride = (
        int(v, 16) for v in next(line for line in lines if line.startswith("state ")).split()[1:]
    )
    assert (cr0, cr3, cr4, efer, rip, rsp) == (state.cr0, state.cr3, state.cr4, state.efer, 0x100000, STACK_TOP)
    assert (gdt_base, gdt_limit) == state.gdt and stride == AP_STACK_STRIDE
    assert flat64_entry_state(1).regs["rsp"] == rsp - stride
    assert sum(line.startswith("batch ") for line in lines) == len(batches)
    assert f"batch {guest.OP_MMIO_READ} {guest.SYNC_MMIO:#x} 20" in lines


def test_paths_have_distinct_keys_and_the_guest_protocol_constants_fit() -> None:
    assert len({p.key for p in guest.PATHS}) == len(guest.PATHS)
    # the parameter blocks sit between the stack top and the EBDA, clear of the flat64 loader
    assert guest.BENCH_PARAMS >= 0x80000 and guest.BENCH_PARAMS + 8 * guest.PARAMS_STRIDE <= 0x9FC00


def test_the_steps_table_gives_each_step_and_its_difference_to_the_one_before() -> None:
    doc = fake_doc()
    rows = doc["paths"]
    assert isinstance(rows, list)
    sync = next(r for r in rows if r["key"] == "pio_out")
    sync["steps"] = {"inproc": _summary(8.1), "gil": _summary(8.3), "kick": _summary(8.3), "events": _summary(8.35)}
    lines = table.render(doc)
    start = next(i for i, line in enumerate(lines) if line.startswith("steps from the C floor"))
    body = lines[start + 2 : start + 2 + len(table.STEP_ROWS)]
    assert lines[start + 1].split() == ["step", "pio_out"]
    assert [line.rsplit(None, 2)[-2:] for line in body[1:3]] == [["8.10", "(+0.10)"], ["8.30", "(+0.20)"]]
    assert body[0].endswith("8.00") and body[5].endswith("8.40 (+0.05)") and body[6].endswith("8.80 (+0.40)")
    assert not any(line.startswith("steps from") for line in table.render(fake_doc()))  # no steps measured


def test_ioeventfd_rows_are_also_put_against_a_floor_that_reads_every_kick() -> None:
    doc = fake_doc()
    rows = doc["paths"]
    assert isinstance(rows, list)
    kicked = next(r for r in rows if r["key"] == "ioeventfd_pio")
    kicked["floor_reader"], kicked["c_over_reader"] = _summary(8.5), 1.04
    line = next(x for x in table.render(doc) if x.startswith("ioeventfd rows against"))
    assert line.endswith("(a'): ioeventfd_pio 8.50 → c/a' 1.04 ✓")
