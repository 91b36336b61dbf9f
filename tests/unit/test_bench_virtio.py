"""`broiler bench --virtio`: the bench kernel's lines parsed and laid out side by side (no KVM needed)."""

from __future__ import annotations

from broiler.bench.virtio import ROWS, parse_bench_output, render_virtio

OUTPUT = """virtio-blk: found
bench: setup transport=modern irq=msix capacity=524288 seg_max=254 queue_size=256 tsc_hz=2000000000
bench: randread bs=4096 qd=1 requests=200 errors=0 ns=100000000 iops=2000 mbps=8.1
bench: randread bs=4096 qd=32 requests=200 errors=0 ns=50000000 iops=4000 mbps=16.3
bench: randwrite bs=4096 qd=1 requests=200 errors=0 ns=100000000 iops=2000 mbps=8.1
bench: randwrite bs=4096 qd=32 requests=200 errors=0 ns=50000000 iops=4000 mbps=16.3
bench: seqread bs=131072 qd=1 requests=200 errors=0 ns=500000000 iops=400 mbps=52.4
bench: done
"""


def test_a_complete_run_parses_into_every_row() -> None:
    run = parse_bench_output("broiler", OUTPUT, 1)
    assert run.problem is None
    assert sorted(run.results) == sorted(ROWS)
    assert run.results[("seqread", 1)] == (400, 52.4)


def test_a_failed_or_cut_run_says_why() -> None:
    assert parse_bench_output("x", OUTPUT.replace("errors=0 ns=5", "errors=3 ns=5", 1), 1).problem == (
        "randread qd=32: 3 requests failed"
    )
    cut = parse_bench_output("x", OUTPUT.split("bench: seqread")[0], 8)
    assert cut.problem is not None and cut.problem.startswith("exit status 8")


def test_the_table_puts_ratios_beside_each_peer() -> None:
    mine = parse_bench_output("broiler", OUTPUT, 1)
    peer = parse_bench_output("qemu cache=none", OUTPUT.replace("iops=4000", "iops=2000"), 1)
    lines = render_virtio([mine, peer])
    assert lines[0].split() == ["test", "broiler", "qemu", "cache=none", "broiler/qemu", "cache=none"]
    row = next(line for line in lines if line.startswith("randread 4K qd=32"))
    assert row.split()[-1] == "2.00"
    assert next(line for line in lines if line.startswith("seqread")).split()[-1] == "1.00"
