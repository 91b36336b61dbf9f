"""Record/replay of virtio devices without KVM: virtio-rng driven through a platform sketch's legacy registers,
and replay's disk answering from a recording. (virtio-blk guests are recorded for real in tests/kvm.)"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.core.memory import MiB
from broiler.devices.virtio import legacy
from broiler.devices.virtio.pci import TransportKind
from broiler.devices.virtio.queue import legacy_layout
from broiler.devices.virtio.spec import DESC_F_WRITE, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK
from broiler.frontend.cli import main
from broiler.vmm import recording as rec
from broiler.vmm.config import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.record_block import DiskFeed
from broiler.vmm.record_virtio import virtio_consoles, virtio_rngs
from broiler.vmm.recorder import Recorder, recording_header
from broiler.vmm.replay import Replayer, replay_config
from broiler.vmm.virtio import virtio_functions

IO_BASE = 0xC000
RING_PFN = 0x10  # the legacy ring at 64 KiB
BUFFER = 0x40000
WANT = 24  # random bytes asked for


def _config(*, console: list[bytes] | None = None) -> MachineConfig:
    """One legacy virtio function: an rng, or a console whose output goes to ``console``."""
    return MachineConfig(
        mem_size=64 * MiB,
        demo_devices=False,
        serial_output=lambda data: None,
        virtio_rng=console is None,
        virtio_console=None if console is None else console.append,
        virtio_transport=TransportKind.LEGACY,
    )


def _start_legacy(sketch: PlatformSketch, queues: int) -> None:
    """What a legacy guest driver does: place BAR0, set up ``queues`` rings (one page apart each), DRIVER_OK."""
    assert sketch.pci is not None
    (fn,) = virtio_functions(sketch.pci)
    slot = next(s for s, f in sketch.pci.functions.items() if f is fn)
    pio = sketch.pio_bus
    for register, value in ((0x10, IO_BASE | 1), (0x04, 1)):  # BAR0 (IO), then IO decoding on
        pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | register)
        pio.write(0xCFC, 4, value)
    pio.write(IO_BASE + legacy.STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    pio.write(IO_BASE + legacy.GUEST_FEATURES, 4, 0)
    for q in range(queues):
        pio.write(IO_BASE + legacy.QUEUE_SELECT, 2, q)
        pio.write(IO_BASE + legacy.QUEUE_PFN, 4, RING_PFN + 0x10 * q)
    pio.write(IO_BASE + legacy.STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK)


def _offer(sketch: PlatformSketch, q: int, flags: int, addr: int, length: int) -> None:
    """Make one single-buffer chain available on queue ``q`` and kick it."""
    desc, avail, _ = legacy_layout(RING_PFN + 0x10 * q, 256)
    sketch.memory.write(desc, struct.pack("<QIHH", addr, length, flags, 0))
    sketch.memory.write(avail, struct.pack("<HHH", 0, 1, 0))  # flags, idx 1, ring[0] = head 0
    sketch.pio_bus.write(IO_BASE + legacy.QUEUE_NOTIFY, 2, q)
    sketch.pio_bus.read(IO_BASE + legacy.ISR, 1)


def _drive_rng(sketch: PlatformSketch) -> None:
    _start_legacy(sketch, 1)
    _offer(sketch, 0, DESC_F_WRITE, BUFFER, WANT)


def _record_rng(path: Path) -> bytes:
    """Record the sketch's rng serving one request; returns the bytes the 'guest' got."""
    config = _config()
    sketch = PlatformSketch(config)
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(config, [], sketch, "rng"))
        recorder.attach(sketch)
        _drive_rng(sketch)
        recorder.close()
    got = sketch.memory.read(BUFFER, WANT)
    sketch.close()
    return got


def _replay(path: Path) -> tuple[Replayer, list[rec.Event]]:
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        events = list(rec.read_events(f, str(path)))
    replayer = Replayer(replay_config(header, None), show=10)
    replayer.run(events)
    return replayer, events


def test_virtio_rng_bytes_are_recorded_as_an_input_and_replayed(tmp_path: Path) -> None:
    path = tmp_path / "rng.rec"
    got = _record_rng(path)
    replayer, events = _replay(path)
    assert replayer.result.divergences == 0, [d.describe() for d in replayer.result.first]
    (entropy,) = [e for e in events if e.kind == rec.ENTROPY]
    assert entropy.data == got and len(got) == WANT and any(got)
    assert any(e.kind == rec.DMA_WRITE and e.addr == BUFFER and e.data == got for e in events)
    assert replayer.platform.memory.read(BUFFER, WANT) == got  # replay's rng gave the guest the recorded bytes


def test_a_changed_virtio_rng_is_the_divergence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rng.rec"
    _record_rng(path)
    monkeypatch.setattr("broiler.devices.virtio.rng.MAX_BYTES_PER_REQUEST", WANT - 8)  # a model that gives fewer
    replayer, _ = _replay(path)
    (only,) = replayer.result.first
    assert only.recorded.startswith(f"random bytes {WANT} bytes") and only.now.startswith(f"random bytes {WANT - 8}")


def test_replay_hands_the_rng_only_recorded_bytes() -> None:
    sketch = PlatformSketch(_config())
    try:
        (rng,) = virtio_rngs(sketch)
        assert rng.source.__name__ == "urandom"  # without --record or replay: the host's bytes, unwrapped
    finally:
        sketch.close()


def test_the_disk_feed_gives_a_read_its_dma_bytes_and_refuses_other_calls() -> None:
    feed = DiskFeed()
    read = rec.Event(rec.DISK, 0, 0x200, 8, rec.disk_value(rec.DISK_READ, 0, 8))
    failed = rec.Event(rec.DISK, 0, 0, 0, rec.disk_value(rec.DISK_FLUSH, 0, errno.EIO, failed=True))
    feed.load(
        [
            read,
            rec.Event(rec.DMA_WRITE, 0, 0x1000, 3, 0, b"abc"),
            rec.Event(rec.DMA_WRITE, 0, 0x2000, 5, 0, b"defgh"),
            rec.Event(rec.DMA_WRITE, 0, 0x3000, 1, 0, b"\0"),  # the status byte: not the read's
            failed,
        ]
    )
    with pytest.raises(OSError):
        feed.take(0, rec.DISK_READ, 0x400, 8)  # another offset than the recording's
    assert feed.take(0, rec.DISK_READ, 0x200, 8) == (8, b"abcdefgh")
    with pytest.raises(OSError) as raised:
        feed.take(0, rec.DISK_FLUSH, 0, 0)
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):
        feed.take(0, rec.DISK_FLUSH, 0, 0)  # nothing more recorded


def _record_console(path: Path) -> list[bytes]:
    """The guest prints "hello" (transmitq), then gives a receive buffer; the host types "hi" afterwards."""
    output: list[bytes] = []
    config = _config(console=output)
    sketch = PlatformSketch(config)
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(config, [], sketch, "console"))
        recorder.attach(sketch)
        _start_legacy(sketch, 2)
        sketch.memory.write(BUFFER + 0x100, b"hello")
        _offer(sketch, 1, 0, BUFFER + 0x100, 5)
        (console,) = virtio_consoles(sketch)
        assert console.pump.flush(5.0)  # the pump's thread wrote it and let the device take more
        _offer(sketch, 0, DESC_F_WRITE, BUFFER, 16)
        console.feed(b"hi")  # from the terminal, outside any guest access
        recorder.close()
    sketch.close()
    return output


def test_virtio_console_input_and_output_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "console.rec"
    assert b"".join(_record_console(path)) == b"hello"
    replayer, events = _replay(path)
    assert replayer.result.divergences == 0, [d.describe() for d in replayer.result.first]
    kinds = {e.kind for e in events}
    assert {rec.CONSOLE_INPUT, rec.CONSOLE_DRAINED, rec.CONSOLE_ROOM} <= kinds
    assert [e.data for e in events if e.kind == rec.CONSOLE_INPUT] == [b"hi"]
    assert replayer.platform.memory.read(BUFFER, 2) == b"hi"  # replay fed the recorded input at its point


def test_a_changed_virtio_console_is_the_divergence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "console.rec"
    _record_console(path)
    monkeypatch.setattr("broiler.devices.virtio.console.INPUT_LIMIT", 1)  # a model that holds less input
    replayer, _ = _replay(path)
    (only,) = replayer.result.first
    assert only.cause == "console input 2 bytes at 0x0 (6869)"
    assert (only.recorded, only.now) == (
        f"DMA write 2 bytes at {BUFFER:#x} (6869)",
        f"DMA write 1 bytes at {BUFFER:#x} (68)",
    )


def test_a_cause_with_more_data_than_the_limit_cuts_the_recording(tmp_path: Path) -> None:
    """A hostile guest's huge disk request must not grow broiler's memory past --record-limit: cut there."""
    config = MachineConfig(mem_size=64 * MiB, demo_devices=False, serial_output=lambda data: None)
    sketch = PlatformSketch(config)
    path = tmp_path / "big.rec"
    with open(path, "wb") as out:
        recorder = Recorder(out, recording_header(config, [], sketch, "big"), limit=16 << 10)
        recorder.attach(sketch)
        sketch.pio_bus.write(0x80, 1, 1)  # a cause before: kept
        recorder.begin()
        for n in range(8):
            recorder.dma("w", 0x1000 * n, bytes(4096))
        recorder.end()
        sketch.pio_bus.write(0x80, 1, 2)  # after the cut: dropped
        recorder.close()
    sketch.close()
    ending = rec.Ending()
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        events = list(rec.read_events(f, str(path), ending))
    assert ending.cut_by_limit and [(e.kind, e.value) for e in events] == [(rec.PIO_WRITE, 1)]


@pytest.mark.parametrize(
    "version, status", [(3, exitcodes.OK), (2, exitcodes.OK), (1, exitcodes.OK), (5, exitcodes.USAGE)]
)
def test_older_formats_are_read_and_a_newer_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int, status: int
) -> None:
    """Format 4 added virtio events and the header's virtio section; files of 1 to 3 have neither."""
    path = tmp_path / "rng.rec"
    _record_rng(path)
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<H", data, 8) == (rec.FORMAT_VERSION,) == (4,)
    struct.pack_into("<H", data, 8, version)
    path.write_bytes(bytes(data))
    assert main(["replay", str(path)]) == status
    out = capsys.readouterr()
    if status == exitcodes.USAGE:
        assert len(out.err.splitlines()) == 1 and f"format version {version}" in out.err
