"""Record/replay without KVM: the file format, the recorder's grouping by cause, replay's verdicts, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.core.memory import MiB
from broiler.core.observe import LINE_RAISED, ObservedDevice, Observer, attach_observer
from broiler.devices.demo import sync_demo
from broiler.devices.virtio.block import DiskImage
from broiler.devices.virtio.block.worker import IoWorker
from broiler.frontend import replay as replay_cli
from broiler.frontend.cli import main
from broiler.vmm import recording as rec
from broiler.vmm.config import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.record_virtio import virtio_blocks
from broiler.vmm.recorder import Recorder, recording_header
from broiler.vmm.replay import Replayer, replay_config
from broiler.vmm.virtio import DiskSpec, virtio_functions

SYNC_PIO = sync_demo.SYNC_PIO_BASE


def _record_sketch(path: Path, drive: list[tuple[str, int, int, int]]) -> None:
    """Record a platform sketch being driven (``("r"|"w", port, size, value)``), as `run --record` would."""
    config = MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None)
    sketch = PlatformSketch(config)
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(config, [], sketch, "sketch"))
        recorder.attach(sketch)
        for rw, port, size, value in drive:
            if rw == "r":
                sketch.pio_bus.read(port, size)
            else:
                sketch.pio_bus.write(port, size, value)
        recorder.close()


def _events(path: Path) -> list[rec.Event]:
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        return list(rec.read_events(f, str(path)))


def test_a_recording_round_trips_its_header_and_events(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    _record_sketch(path, [("w", SYNC_PIO + 4, 4, 3), ("r", SYNC_PIO + 4, 4, 0), ("r", 0x7777, 2, 0)])
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
    assert header["config"]["mem_size"] == 64 * MiB and ["pio", SYNC_PIO, 0x10, "sync-pio"] in header["devices"]
    events = _events(path)
    assert [(e.kind, e.addr, e.size, e.value) for e in events] == [
        (rec.PIO_WRITE, SYNC_PIO + 4, 4, 3),
        (rec.PIO_READ, SYNC_PIO + 4, 4, 3),
        (rec.PIO_READ, 0x7777, 2, 0xFFFF),  # unmapped: all ones, recorded too
    ]


def test_a_cause_is_written_before_what_the_device_did_while_handling_it() -> None:
    out = io.BytesIO()
    recorder = Recorder(out, {"config": {}})
    recorder.begin()
    recorder.emit("irq", "w", 5, 0, 1, LINE_RAISED)  # raised while answering the read below
    recorder.dma("r", 0x1000, b"abc")
    recorder.emit("pio", "r", 0x60, 1, 0x42, "dev")
    recorder.end()
    recorder.close()
    out.seek(0)
    rec.read_header(out, "mem")
    events = list(rec.read_events(out, "mem"))
    assert [e.kind for e in events] == [rec.PIO_READ, rec.IRQ_LEVEL, rec.DMA_READ]
    assert events[2].data == b"abc"


def test_replay_of_an_unchanged_platform_finds_no_divergence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.rec"
    _record_sketch(path, [("r", SYNC_PIO + 8, 4, 0), ("w", SYNC_PIO, 4, 7), ("r", SYNC_PIO, 4, 0)])
    assert main(["replay", str(path)]) == exitcodes.OK
    assert "replayed 3 events (3 causes)" in capsys.readouterr().out


def test_a_changed_register_is_exactly_the_divergence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.rec"
    _record_sketch(path, [("r", SYNC_PIO + 4, 4, 0), ("r", SYNC_PIO + 8, 4, 0), ("r", SYNC_PIO + 12, 4, 0)])
    monkeypatch.setitem(sync_demo.RESET_VALUES, sync_demo.MIN_FREQ, 0x11)
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        result = Replayer(replay_config(header, None)).run(rec.read_events(f, str(path)))
    assert result.divergences == 1
    assert result.first[0].describe() == f"event 1: pio read {SYNC_PIO + 8:#x}/4 value 0x10: recorded 0x10, now 0x11"


def test_replay_reports_an_effect_the_device_no_longer_has(tmp_path: Path) -> None:
    """A recorded interrupt the rebuilt device does not raise is a divergence of that cause."""
    out = io.BytesIO()
    config = MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None)
    recorder = Recorder(out, recording_header(config, [], PlatformSketch(config), "fake"))
    recorder.begin()
    recorder.emit("pio", "w", SYNC_PIO, 4, 1, "sync-pio")
    recorder.emit("irq", "w", 9, 0, 1, LINE_RAISED)
    recorder.end()
    recorder.close()
    out.seek(0)
    header = rec.read_header(out, "mem")
    result = Replayer(replay_config(header, None)).run(rec.read_events(out, "mem"))
    assert [d.describe() for d in result.first] == [
        f"event 0: pio write {SYNC_PIO:#x}/4 value 0x1: recorded IRQ line GSI 9 level 1, now nothing more"
    ]


def test_a_foreign_file_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "not.rec"
    path.write_bytes(b"\x7fELF" + bytes(100))
    assert main(["replay", str(path)]) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a broiler recording" in err


@pytest.mark.parametrize("cut", [10, 40, -3, -30])
def test_a_truncated_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int
) -> None:
    path = tmp_path / "r.rec"
    _record_sketch(path, [("r", SYNC_PIO + 8, 4, 0)] * 50)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    assert main(["replay", str(path)]) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("truncated or corrupt" in err or "not a broiler recording" in err)


def test_plot_without_matplotlib_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.rec"
    _record_sketch(path, [("r", SYNC_PIO + 8, 4, 0)])
    monkeypatch.setattr(replay_cli, "load_pyplot", lambda: None)
    assert main(["replay", str(path), "--plot", str(tmp_path / "p.png")]) == exitcodes.USAGE
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_without_record_a_virtio_disk_uses_plain_memory(tmp_path: Path) -> None:
    """Zero cost off: only --record hands virtio its observed memory and wraps the disk and the IO thread."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    config = MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None, disks=[DiskSpec(str(disk))])
    sketch = PlatformSketch(config)
    try:
        (block,) = virtio_blocks(sketch)
        assert type(block.disk) is DiskImage and block.worker_factory is IoWorker
        assert all(fn.transport.memory is sketch.memory for fn in virtio_functions(sketch.pci))
        attach_observer(sketch, Observer())  # --trace alone changes none of it either
        assert all(fn.transport.memory is sketch.memory for fn in virtio_functions(sketch.pci))
    finally:
        sketch.close()


def test_without_an_observer_no_proxy_sits_on_the_exit_path() -> None:
    """Recording and tracing cost nothing when off: the bus regions hold the devices themselves."""
    sketch = PlatformSketch(MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None))
    regions = sketch.pio_bus.regions() + sketch.mmio_bus.regions()
    assert regions and not any(isinstance(r.device, ObservedDevice) for r in regions)
    assert sketch.pio_bus.wrap_device is None and sketch.loop.observer is None and sketch.dma_memory.observer is None
    attach_observer(sketch, Observer())
    assert all(isinstance(r.device, ObservedDevice) for r in sketch.pio_bus.regions() + sketch.mmio_bus.regions())


def test_a_second_observer_joins_the_first(tmp_path: Path) -> None:
    """--trace with --record: both see every access, through one proxy per device."""
    sketch = PlatformSketch(MachineConfig(mem_size=64 * MiB, serial_output=lambda data: None))
    seen: list[tuple[str, int]] = []

    class Counting(Observer):
        def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
            seen.append((kind, addr))

    attach_observer(sketch, Counting())
    attach_observer(sketch, Counting())
    sketch.pio_bus.read(SYNC_PIO, 4)
    sketch.pio_bus.read(0x7777, 1)  # unmapped: observed once per observer too
    assert seen == [("pio", SYNC_PIO)] * 2 + [("pio", 0x7777)] * 2
