"""`broiler bench --quick` on the real /dev/kvm: the table's rows and the JSON's keys, never the timings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broiler.bench import floor, guest, hosts, steps
from broiler.bench.runner import BenchOptions, run_bench
from broiler.bench.table import SYNC_KEYS, render
from broiler.frontend import cli

pytestmark = pytest.mark.kvm


def test_quick_bench_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--json", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    for p in guest.PATHS:
        assert p.label in text
    assert "scaling of sync PIO out" in text and "start-up of a 4G VM" in text
    assert floor.compiler() is None or "steps from the C floor to broiler" in text
    doc = json.loads(out.read_text())
    assert doc["schema"] == "broiler-bench/2" and doc["quick"] is True
    assert [row["key"] for row in doc["paths"]] == [p.key for p in guest.PATHS]
    for row in doc["paths"]:
        assert set(row) >= {"key", "label", "floor", "bare", "broiler", "c_over_a", "c_over_b", "missing"}
        assert row["bare"] is not None and len(row["bare"]["samples_us"]) == doc["reps"]
        assert row["broiler"] is not None or "broiler" in row["missing"]
        assert row["broiler_py"] is not None or "broiler_py" in row["missing"]
        if hosts.compiled_loop_built() and os.environ.get("BROILER_PURE_PYTHON") != "1":
            assert row["broiler_py"] is not None and len(row["broiler_py"]["samples_us"]) == doc["reps"]
            assert (row["d_over_a"] is not None) == (row["floor"] is not None)
        if floor.compiler() is not None:
            assert row["floor"] is not None and row["c_over_a"] is not None
            if row["key"] in SYNC_KEYS:  # the in-process floor ran every step of this path
                assert set(row["steps"]) == set(steps.STEPS)
                assert all(len(s["samples_us"]) == doc["reps"] and s["median_us"] > 0 for s in row["steps"].values())
            else:
                assert "steps" not in row
            if row["key"].startswith("ioeventfd_"):  # the floor with a reader thread ran these too
                assert len(row["floor_reader"]["samples_us"]) == doc["reps"] and row["c_over_reader"] is not None
    assert set(doc["scaling"]["impls"]["broiler"]) == {"1", "2", "speedup"}
    assert set(doc["startup"]["broiler"]["phases_ms"]) == {"machine", "load", "first_exit"}


def test_without_a_compiler_the_floor_is_skipped_with_one_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floor, "compiler", lambda: None)
    opts = BenchOptions.quick_defaults()
    opts.paths, opts.reps, opts.scaling, opts.startup = ["pio_out"], 1, False, False
    opts.qemu = False  # the QEMU column has its own tests (test_bench_qemu_io.py)
    doc = run_bench(opts)
    notes, paths = doc["notes"], doc["paths"]
    assert isinstance(notes, list) and isinstance(paths, list)
    assert any("no C compiler" in note for note in notes)
    row = paths[0]
    assert row["floor"] is None and row["bare"] is not None and row["broiler"] is not None
    assert any("n/a (no C floor)" in line for line in render(doc))


def test_bad_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--paths", "pio_out,warp_drive"]) == 2
    assert cli.main(["bench", "--n1", "500", "--n2", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "warp_drive" in err[0] and "--n2" in err[1]


def test_cpu_clock_times_every_column_by_its_vcpu_thread() -> None:
    opts = BenchOptions.quick_defaults()
    opts.paths, opts.reps, opts.scaling, opts.startup, opts.clock = ["pio_out"], 1, False, False, "cpu"
    opts.qemu = False  # the self-timed columns time themselves by the TSC, whatever the clock
    doc = run_bench(opts)
    assert doc["clock"] == "cpu" and "[clock: vCPU thread CPU time]" in render(doc)[0]
    paths = doc["paths"]
    assert isinstance(paths, list)
    row = paths[0]
    # a sync exit costs the vCPU thread microseconds of CPU whichever host runs it (the guest's emulated loop
    # and KVM's exit path run on it), so every column measures something and none is a wall-clock artefact
    for impl in ("floor", "bare", "broiler"):
        if row[impl] is not None:
            assert 0.5 < row[impl]["median_us"] < 1000, (impl, row[impl])
