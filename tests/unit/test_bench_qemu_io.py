"""`broiler bench`'s QEMU column without KVM or QEMU: io_bench.elf's lines parsed, ticks turned into µs, the
cells and ratio of a row, the table with and without the column, and the command lines both VMMs get."""

from __future__ import annotations

from pathlib import Path

import pytest

from broiler.bench import qemu_io, table
from broiler.bench.qemu import broiler_command, qemu_command

KHZ = 2_000_000  # 2 GHz: 2000 ticks per µs


def guest_output(per_op: dict[str, int], *, reps: int = 2, counts: int = 0, n1: int = 100, n2: int = 600) -> str:
    """What io_bench.elf prints when each path costs ``per_op`` ticks, plus 5000 ticks of fixed overhead."""
    lines = ["iobench: start tsc_hz=2000123000 port=0x5000 mmio=0xe0000000 bar0=0xfebff000 bar1=0xc000"]
    for path, ticks in per_op.items():
        for rep in range(reps):
            for n in (n1, n2):
                lines.append(f"iobench: {path} rep={rep} n={n} ticks={5000 + ticks * n}")
        if path.startswith("ioeventfd"):
            lines.append(f"iobench: {path} device_count={counts}")
    lines.append("iobench: done")
    return "\n".join(lines) + "\n"


def test_a_complete_run_gives_ticks_per_operation_per_repetition() -> None:
    run = qemu_io.parse_output("qemu", guest_output({"loop": 3000, "pio_out": 20000, "ioeventfd_pio": 4000}), 1)
    assert run.problem is None
    assert run.guest_tsc_hz == 2000123000
    assert run.ticks_per_op == {"loop": [3000.0, 3000.0], "pio_out": [20000.0, 20000.0], "ioeventfd_pio": [4000.0] * 2}


@pytest.mark.parametrize(
    "text, status, expected",
    [
        (guest_output({"ioeventfd_mmio": 4000}, counts=150), 1, "ioeventfd_mmio: 150 writes reached pci-testdev"),
        (guest_output({"pio_in": 9000}).replace("iobench: done\n", ""), 1, "exit status 1"),
        (guest_output({"pio_in": 9000}), 0x7F, "exit status 127"),
        ("iobench: start tsc_hz=1 port=0x5000", None, "killed at its time-out"),
        ("iobench: ioeventfd_pio skipped no pci-testdev\niobench: done\n", 1, "ioeventfd_pio skipped: no pci-testdev"),
    ],
    ids=["write-reached-device", "cut-short", "bad-status", "timeout", "no-testdev"],
)
def test_a_broken_run_says_why(text: str, status: int | None, expected: str) -> None:
    run = qemu_io.parse_output("broiler_st", text, status)
    assert run.problem is not None and expected in run.problem


def test_a_batch_without_its_partner_is_not_a_sample() -> None:
    text = guest_output({"pio_out": 20000}, reps=1).replace(
        "iobench: pio_out rep=0 n=600", "iobench: other rep=0 n=600"
    )
    assert qemu_io.parse_output("qemu", text, 1).ticks_per_op == {}


def columns_without_kvm(
    monkeypatch: pytest.MonkeyPatch, *, qemu: str | None, with_qemu: bool = True
) -> qemu_io.SelfTimedColumns:
    monkeypatch.setattr(qemu_io, "find_qemu", lambda: qemu)
    monkeypatch.setattr(qemu_io, "host_tsc_khz", lambda: KHZ)
    monkeypatch.setattr(qemu_io, "qemu_version", lambda _binary: "QEMU emulator version 7.2.22")
    monkeypatch.setattr(qemu_io, "find_qboot", lambda _binary: None)
    return qemu_io.SelfTimedColumns(["loop", "pio_out", "coalesced_mmio"], 100, 600, with_qemu=with_qemu)


def test_rows_get_microseconds_and_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = columns_without_kvm(monkeypatch, qemu="/usr/bin/qemu-system-x86_64")
    assert cols.active and cols.paths == ["loop", "pio_out"]
    cols.add("broiler_st", qemu_io.parse_output("broiler_st", guest_output({"pio_out": 22000}), 1))
    cols.add("qemu", qemu_io.parse_output("qemu", guest_output({"pio_out": 20000}), 1))
    row: dict[str, object] = {"key": "pio_out", "missing": {}}
    cols.fill_row(row)
    assert row["broiler_st"]["median_us"] == 11.0  # type: ignore[index]
    assert row["qemu"]["median_us"] == 10.0  # type: ignore[index]
    assert row["cst_over_e"] == 1.1
    other: dict[str, object] = {"key": "coalesced_mmio", "missing": {}}
    cols.fill_row(other)
    assert other["qemu"] is None and other["cst_over_e"] is None
    assert other["missing"] == {"broiler_st": qemu_io.NO_EQUIVALENT, "qemu": qemu_io.NO_EQUIVALENT}
    section = cols.section()
    assert section is not None and section["tsc_khz"] == KHZ and section["tsc_source"] == "KVM_GET_TSC_KHZ"


def test_without_qemu_the_cells_say_so_with_one_note(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = columns_without_kvm(monkeypatch, qemu=None)
    assert not cols.active
    cols.run_round(lambda _text: pytest.fail("nothing runs without QEMU"), "round 1/1")
    row: dict[str, object] = {"key": "pio_out", "missing": {}}
    cols.fill_row(row)
    assert row["missing"] == {"broiler_st": qemu_io.NO_QEMU, "qemu": qemu_io.NO_QEMU}
    assert len(cols.all_notes()) == 1 and "qemu-system-x86_64 is not installed" in cols.all_notes()[0]
    section = cols.section()
    assert section is not None and section["binary"] is None


def test_no_qemu_leaves_the_columns_out(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = columns_without_kvm(monkeypatch, qemu="/usr/bin/qemu-system-x86_64", with_qemu=False)
    assert not cols.active and cols.section() is None and cols.all_notes() == []
    row: dict[str, object] = {"key": "pio_out", "missing": {}}
    cols.fill_row(row)
    assert row["qemu"] is None and row["missing"] == {}


def doc_with(qemu_section: dict[str, object] | None, *, qemu_cell: dict[str, object] | None) -> dict[str, object]:
    summary = {"median_us": 11.0, "min_us": 10.5, "max_us": 11.5, "samples_us": [10.5, 11.0, 11.5]}
    row = {"key": "pio_out", "label": "sync PIO out", "floor": summary, "bare": summary, "broiler": summary,
           "broiler_py": summary, "missing": {} if qemu_cell else {"qemu": qemu_io.NO_QEMU}, "c_over_a": 1.0,
           "c_over_b": 1.0, "d_over_a": 1.0, "broiler_st": summary, "qemu": qemu_cell,
           "cst_over_e": 1.1 if qemu_cell else None}  # fmt: skip
    return {"schema": "broiler-bench/2", "reps": 3, "n1": 100, "n2": 600, "paths": [row], "notes": [],
            "qemu": qemu_section}  # fmt: skip


SECTION = {"binary": "/usr/bin/qemu-system-x86_64", "version": "QEMU emulator version 7.2.22", "kernel": "io_bench.elf",
           "tsc_khz": KHZ, "tsc_source": "KVM_GET_TSC_KHZ"}  # fmt: skip


def test_the_table_shows_the_qemu_column_and_its_ratio() -> None:
    cell = {"median_us": 10.0, "min_us": 9.0, "max_us": 11.0, "samples_us": [9.0, 10.0, 11.0]}
    lines = table.render(doc_with(SECTION, qemu_cell=cell))
    assert "broiler self-timed (c′)" in lines[1] and "QEMU self-timed (e)" in lines[1] and "c′/e" in lines[1]
    row = next(line for line in lines if line.startswith("sync PIO out"))
    assert "10.00 ±1.00" in row and row.split()[-1] == "1.10"
    assert any(
        "TSC 2000000 kHz from KVM_GET_TSC_KHZ" in line and "QEMU emulator version 7.2.22" in line for line in lines
    )
    assert "broiler / QEMU (c′/e): pio_out 1.10" in lines


def test_the_table_without_qemu_says_why_and_no_qemu_drops_the_columns() -> None:
    absent = table.render(doc_with({**SECTION, "binary": None}, qemu_cell=None))
    assert "QEMU self-timed (e)" in absent[1]
    assert qemu_io.NO_QEMU in next(line for line in absent if line.startswith("sync PIO out"))
    skipped = table.render(doc_with(None, qemu_cell=None))
    assert "QEMU" not in "\n".join(skipped) and "c′/e" not in skipped[1]


def test_both_vmms_get_the_same_kernel_and_command_line() -> None:
    kernel = Path("/k/io_bench.elf")
    append = qemu_io.guest_cmdline(100, 600, ["loop", "pio_out"])
    assert append == "n1=100 n2=600 reps=1 paths=loop,pio_out"
    q = qemu_command("/usr/bin/qemu-system-x86_64", kernel, append, devices=qemu_io.QEMU_DEVICES)
    assert q[q.index("-kernel") + 1] == str(kernel) and q[q.index("-append") + 1] == append
    assert "pci-testdev" in q and "isa-debug-exit,iobase=0xf4,iosize=4" in q and q[q.index("-accel") + 1] == "kvm"
    b = broiler_command(kernel, append, 30, extra=qemu_io.BROILER_ARGS)
    assert b[b.index("-k") + 1] == str(kernel) and b[b.index("-p") + 1] == append and "--testdev" in b


def test_without_the_kernel_image_the_cells_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(qemu_io, "KERNEL", tmp_path / "io_bench.elf")
    cols = columns_without_kvm(monkeypatch, qemu="/usr/bin/qemu-system-x86_64")
    assert not cols.active and any("python guests/build.py" in note for note in cols.all_notes())
    row: dict[str, object] = {"key": "pio_out", "missing": {}}
    cols.fill_row(row)
    assert row["missing"] == {"broiler_st": qemu_io.NO_KERNEL, "qemu": qemu_io.NO_KERNEL}


def test_qemu_boots_with_qboot_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = columns_without_kvm(monkeypatch, qemu="/usr/bin/qemu-system-x86_64")
    assert "-bios" not in cols.commands()["qemu"]
    assert cols.section() is not None and cols.section()["firmware"] == "SeaBIOS (QEMU's default)"  # type: ignore[index]
    monkeypatch.setattr(qemu_io, "find_qboot", lambda _binary: Path("/usr/share/qemu/qboot.rom"))
    cols = qemu_io.SelfTimedColumns(["pio_out"], 100, 600, with_qemu=True)
    qemu = cols.commands()["qemu"]
    assert qemu[qemu.index("-bios") + 1] == "/usr/share/qemu/qboot.rom" and "-bios" not in cols.commands()["broiler_st"]
    assert cols.section()["firmware"] == "qboot"  # type: ignore[index]
