"""Record/replay without KVM, issue 16's later items: time as a recorded input (the PM timer, the CMOS clock),
the --record-limit cut, and `broiler replay --plot`."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.core.clock import MONOTONIC_NS, UTC_SECONDS, DeviceClock
from broiler.core.memory import MiB
from broiler.devices.demo import sync_demo
from broiler.devices.legacy import pm_timer
from broiler.devices.legacy.cmos import CMOS_INDEX
from broiler.frontend.cli import main
from broiler.vmm import recording as rec
from broiler.vmm.config import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.recorder import Recorder, recording_header
from broiler.vmm.replay import Replayer, replay_config

PM = pm_timer.PM_TIMER_PORT
SYNC_PIO = sync_demo.SYNC_PIO_BASE
UTC_2026 = 1_795_000_000.0  # some moment in 2026


class HostTime:
    """A host clock that moves 1 ms at each look: every PM timer read sees a different count."""

    def __init__(self) -> None:
        self.ns = 5_000_000_000

    def __call__(self) -> int:
        self.ns += 1_000_000
        return self.ns


def _sketch() -> PlatformSketch:
    return PlatformSketch(MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None))


def _record_time(path: Path) -> list[int]:
    """Record a sketch whose clock runs, reading the PM timer and the RTC's seconds; returns what was read."""
    clock = DeviceClock(HostTime(), lambda: UTC_2026)
    sketch = PlatformSketch(MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None), clock)
    clock.start()  # as a Machine does when its vCPUs start
    seen = []
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(sketch.config, [], sketch, "time"))
        recorder.attach(sketch)
        for _ in range(3):
            seen.append(sketch.pio_bus.read(PM, 4))
        sketch.pio_bus.write(CMOS_INDEX, 1, 0x00)  # the RTC's seconds
        seen.append(sketch.pio_bus.read(CMOS_INDEX + 1, 1))
        recorder.close()
    return seen


def _replay(path: Path) -> Replayer:
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        replayer = Replayer(replay_config(header, None), show=100)
        replayer.run(rec.read_events(f, str(path)))
    return replayer


def test_clock_reads_are_recorded_and_fed_back_so_time_keeping_devices_replay(tmp_path: Path) -> None:
    path = tmp_path / "t.rec"
    seen = _record_time(path)
    assert len(set(seen[:3])) == 3 and seen[3] == 0x40  # the PM timer moved; 1_795_000_000 is 40 s past the minute
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        clocks = [(e.addr, e.value) for e in rec.read_events(f, str(path)) if e.kind == rec.CLOCK]
    assert [source for source, _ in clocks] == [MONOTONIC_NS] * 3 + [UTC_SECONDS]
    assert clocks[3][1] == int(UTC_2026)
    # Replay's clock never runs: the PM timer answers what it answered in the run only because it is fed.
    assert _replay(path).result.divergences == 0


def test_a_model_that_reads_the_clock_once_more_diverges_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.rec"
    _record_time(path)
    original = pm_timer.PmTimer.count

    def count_twice(self: pm_timer.PmTimer) -> int:
        original(self)
        return original(self)

    monkeypatch.setattr(pm_timer.PmTimer, "count", count_twice)
    result = _replay(path).result
    assert result.divergences == 3  # each of the three PM timer reads
    first = result.first[0]
    assert first.cause.startswith(f"pio read {PM:#x}/4") and first.recorded == "nothing more"
    assert first.now.startswith("clock read (ns)")


def _record_reads(path: Path, reads: int, limit: int | None, cuts: list[int]) -> int:
    sketch = _sketch()
    with open(path, "wb") as out:
        header = recording_header(sketch.config, [], sketch, "limit")
        recorder = Recorder(out, header, limit=limit, on_cut=cuts.append)
        recorder.attach(sketch)
        for i in range(reads):
            sketch.pio_bus.write(SYNC_PIO + 4, 4, i * 2_654_435_761 & 0xFFFF_FFFF)  # poorly compressible
        recorder.close()
    return recorder.writer.written_events


def test_a_recording_at_its_limit_is_cut_with_a_marker_and_replays_what_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, cuts = tmp_path / "cut.rec", list[int]()
    written = _record_reads(path, 20_000, 16 << 10, cuts)
    assert path.stat().st_size <= 16 << 10
    assert cuts == [written] and 0 < written < 20_000  # told once, with what the file holds
    ending = rec.Ending()
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        assert sum(1 for _ in rec.read_events(f, str(path), ending)) == written
    assert ending.cut_by_limit
    assert main(["replay", str(path)]) == exitcodes.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "the recording was cut by its --record-limit: the run went on past its last event"
    assert lines[-1].startswith(f"replayed {written} events") and lines[-1].endswith("no divergence")


def test_a_recording_under_its_limit_ends_normally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, cuts = tmp_path / "whole.rec", list[int]()
    assert _record_reads(path, 100, 1 << 20, cuts) == 100 and cuts == []
    assert main(["replay", str(path)]) == exitcodes.OK
    assert "cut by" not in capsys.readouterr().out


@pytest.mark.parametrize("limit", ["1K", "lots", "0"])
def test_a_bad_record_limit_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    args = ["run", "--record", str(tmp_path / "r.rec"), "--record-limit", limit]
    assert main(args) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--record-limit" in err


def test_plot_draws_a_png_of_the_expected_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = pytest.importorskip("matplotlib.image")  # an optional extra: pip install broiler[plot]

    path, png = tmp_path / "r.rec", tmp_path / "p.png"
    _record_reads(path, 50, None, [])
    assert main(["replay", str(path), "--plot", str(png)]) == exitcodes.OK
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    rows = 1  # one device was accessed: sync-pio
    assert (width, height) == (1000, round(100 * (0.4 * rows + 1.5)))  # frontend/replay.py's figure at 100 dpi
    pixels = image.imread(str(png))
    assert pixels.shape[:2] == (height, width) and pixels.min() < pixels.max()  # something is drawn


def test_causes_begun_after_the_vm_started_stopping_are_not_recorded(tmp_path: Path) -> None:
    """A stopping VM drops interrupts (core/irq.py): what a late cause did could not be replayed."""
    sketch, path = _sketch(), tmp_path / "stop.rec"
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(sketch.config, [], sketch, "stop"))
        recorder.attach(sketch)
        sketch.pio_bus.write(SYNC_PIO + 4, 4, 1)
        setattr(sketch, "stopping", True)  # what Machine.request_exit sets  # noqa: B010
        sketch.pio_bus.write(SYNC_PIO + 4, 4, 2)
        recorder.close()
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        assert [e.value for e in rec.read_events(f, str(path))] == [1]
