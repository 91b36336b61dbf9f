"""Record real guests with `broiler run --record`, then replay them offline (issue 16 item 5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.core.memory import MiB
from broiler.devices.demo import sync_demo
from broiler.devices.virtio.block import device as block_device
from broiler.devices.virtio.block import request as block_request
from broiler.guests import packaged_guest
from broiler.vmm import recording as rec
from broiler.vmm.config import MachineConfig
from broiler.vmm.machine import Machine
from broiler.vmm.recorder import Recorder, recording_header
from broiler.vmm.replay import Divergence, Replayer, replay_config
from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli
from tests.kvm.virtio_blk_disk import BENCH_DISK_SECTORS, DISK_SECTORS, SERIAL, guest_cmdline

pytestmark = pytest.mark.kvm


def _record(path: Path, *args: str, statuses: tuple[int, ...] = (exitcodes.OK, 1)) -> int:
    """``statuses``: the demo powers off (0); test guests exit with 0 failures (1)."""
    run = broiler_cli("run", "--timeout=60", "--record", str(path), *args)
    assert run.returncode in statuses, run.stdout[-2000:] + run.stderr
    assert path.stat().st_size > 0
    return run.returncode


@pytest.fixture(scope="module")
def demo_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "demo.rec"
    _record(path)
    return path


def _replay(path: Path, *args: str) -> tuple[int, str]:
    run = broiler_cli("replay", str(path), *args)
    return run.returncode, run.stdout + run.stderr


def test_the_demo_replays_with_no_divergence(demo_recording: Path) -> None:
    status, output = _replay(demo_recording)
    assert status == exitcodes.OK, output
    assert output.splitlines()[-1].endswith("no divergence")


def test_a_changed_demo_register_is_exactly_the_divergence(
    demo_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sync_demo.RESET_VALUES, sync_demo.MAX_FREQ, 0x41)
    with open(demo_recording, "rb") as f:
        header = rec.read_header(f, str(demo_recording))
        result = Replayer(replay_config(header, None), show=100).run(rec.read_events(f, str(demo_recording)))
    # The demo reads MAX_FREQ once through the port block and once through the MMIO block.
    assert [(d.cause.split()[:3], d.recorded, d.now) for d in result.first] == [
        (["pio", "read", f"{sync_demo.SYNC_PIO_BASE + 0xC:#x}/4"], "0x40", "0x41"),
        (["mmio", "read", f"{sync_demo.SYNC_MMIO_BASE + 0xC:#x}/4"], "0x40", "0x41"),
    ]


def test_a_changed_user_device_is_exactly_the_divergence(tmp_path: Path) -> None:
    changed = tmp_path / "changed.py"
    source = (ROOT / "examples" / "counter.py").read_text()
    changed.write_text(source.replace("return (self.count - 1)", "return (self.count - 1 + (self.count == 42))"))
    counter = f"{ROOT / 'examples' / 'counter.py'}:Counter,pio=0x700,size=4"
    path = tmp_path / "counter.rec"
    _record(path, "--no-demo-devices", "--guest", str(ROOT / "examples" / "counter.bin"), "--device", counter)
    assert _replay(path)[0] == exitcodes.OK
    status, output = _replay(path, "--device", f"{changed}:Counter,pio=0x700,size=4")
    assert status == exitcodes.DIVERGED, output
    lines = output.splitlines()
    assert len(lines) == 2 and lines[1].endswith(": 1 divergence")
    assert lines[0].startswith("event ") and lines[0].endswith("pio read 0x700/4 value 0x29: recorded 0x29, now 0x2a")


GUESTS = ROOT / "broiler" / "guests"
VIRTIO = {rec.VIRTIO_WORK, rec.DISK, rec.DMA_READ, rec.DMA_WRITE, rec.MSI, rec.KICK_MMIO}
PCI_TEST_KINDS = {rec.DMA_WRITE, rec.MSI, rec.IRQ_LEVEL, rec.KICK_MMIO, rec.TIMER_FIRED}  # every async path
# Every packaged guest: how `broiler run` runs it, the exit statuses it may end with, event kinds it must show.
ROUND_TRIPS: dict[str, tuple[list[str], tuple[int, ...], set[int]]] = {
    "demo.bin": ([], (exitcodes.OK,), {rec.PIO_READ, rec.MMIO_READ, rec.COALESCED_MMIO, rec.KICK_PIO}),
    "async_smp.bin": (["-c", "2", "--async-delay", "0"], (1,), {rec.KICK_PIO}),
    "async_test.bin": (["--async-delay", "0.005"], (1,), {rec.KICK_PIO, rec.KICK_MMIO, rec.IRQ_LEVEL}),
    "bench_io.bin": ([], (1,), {rec.PIO_WRITE}),  # with no host driving it, it stops at once
    "coalesced_stop.bin": ([], (1,), {rec.COALESCED_MMIO}),
    "doorbells.bin": ([], (1,), set()),
    "fuzz.bin": (["-c", "2"], ((0x2A << 1) | 1,), {rec.PIO_READ, rec.MMIO_READ}),
    "hammer.bin": ([], (1,), {rec.PIO_READ}),
    "highmem.bin": (["-m", "5G"], (1,), set()),
    "insn_test.elf": ([], (1,), {rec.PIO_WRITE}),
    # its sync and ioeventfd paths on QEMU's test devices, with small counts
    "io_bench.elf": (
        ["--testdev", "--no-demo-devices", "-p", "n1=100 n2=300 reps=1"],
        (1,),
        {rec.PIO_READ, rec.MMIO_WRITE, rec.KICK_PIO},
    ),
    "mbhpet.elf": ([], (1,), {rec.CLOCK, rec.TIMER_FIRED, rec.IRQ_PULSE, rec.IRQ_LEVEL}),
    "mbplat.elf": (["-c", "2"], (1,), {rec.CLOCK}),
    "mbs3.elf": ([], (1,), {rec.S3_SLEEP, rec.S3_WAKE, rec.CLOCK}),  # woken by its RTC alarm
    "mbtest.elf": (["--testdev", "-p", "expect_cpus=1 mods=1 expect_ram=128M irqs=24"], (1,), set()),
    "pause_count.bin": (["--timeout", "2"], (exitcodes.TIMEOUT,), {rec.PIO_WRITE, rec.KICK_PIO}),  # never ends
    "pci_test.bin": (["--async-delay", "0", "-m", "64M"], (1,), PCI_TEST_KINDS),
    "sync_test.bin": ([], (1,), {rec.PIO_READ, rec.MMIO_READ}),
    # never ends; its ticks are in-kernel timers, so the recording sees the port writes their handlers make
    "snapshot_ticks.bin": (["--timeout", "2"], (exitcodes.TIMEOUT,), {rec.PIO_WRITE}),
    # virtio-blk (a zeroed disk each, made by _virtio_disk): completions on the IO thread, reads as DMA writes
    "virtio_blk_test.elf": (
        ["--virtio-transport", "modern", "-p", guest_cmdline("modern", "msix", False)],
        (1,),
        VIRTIO,
    ),
    "virtio_blk_bench.elf": (["--virtio-transport", "modern", "-p", "requests=64 ms=20000"], (1,), VIRTIO),
    "snapshot_async.bin": (["--async-delay", "0.05"], (1,), {rec.KICK_PIO, rec.KICK_MMIO, rec.IRQ_LEVEL}),
    "torn_smp.bin": (["-c", "2"], (1,), set()),
}
VIRTIO_DISK_BYTES = {"virtio_blk_test.elf": DISK_SECTORS * 512, "virtio_blk_bench.elf": BENCH_DISK_SECTORS * 512}
NOT_RECORDABLE: dict[str, str] = {}  # guest -> why --record refuses it: none is refused since format 4
# Guests that need the syscall assist's spare tables (0x90000-0x92fff in each): recorded through the API below,
# with the number of vCPUs they run on.
ASSISTED = {"syscall_test.bin": 1, "fsbase_smp.bin": 2, "pt_reuse_smp.bin": 2}


def test_every_packaged_guest_is_round_tripped_or_said_not_to_be() -> None:
    packaged = {p.name for p in GUESTS.iterdir() if p.suffix in (".bin", ".elf")}
    assert packaged == set(ROUND_TRIPS) | set(NOT_RECORDABLE) | set(ASSISTED)


def _noting_kinds(events: Iterator[rec.Event], kinds: set[int]) -> Iterator[rec.Event]:
    for event in events:
        kinds.add(event.kind)
        yield event


def _replay_in_process(path: Path) -> tuple[int, set[int], float]:
    """(divergences, event kinds seen, seconds): replay without a Python start, to keep CI short."""
    kinds: set[int] = set()
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        t0 = time.perf_counter()
        result = Replayer(replay_config(header, None), show=5).run(_noting_kinds(rec.read_events(f, str(path)), kinds))
    elapsed = time.perf_counter() - t0
    assert result.divergences == 0, "\n".join(d.describe() for d in result.first)
    return result.divergences, kinds, elapsed


def _replay_divergences(path: Path) -> list[Divergence]:
    with open(path, "rb") as f:
        header = rec.read_header(f, str(path))
        result = Replayer(replay_config(header, None), show=100).run(rec.read_events(f, str(path)))
    assert result.divergences == len(result.first)
    return result.first


def _virtio_disk(tmp_path: Path, guest: str) -> list[str]:
    """A zeroed disk for a virtio guest (none for the others), as --disk arguments."""
    if guest not in VIRTIO_DISK_BYTES:
        return []
    disk = tmp_path / f"{guest}.img"
    disk.write_bytes(bytes(VIRTIO_DISK_BYTES[guest]))
    return ["--disk", f"{disk},serial={SERIAL}"]


@pytest.mark.parametrize("guest", sorted(ROUND_TRIPS))
def test_a_packaged_guest_round_trips_with_no_divergence(tmp_path: Path, guest: str) -> None:
    args, statuses, kinds = ROUND_TRIPS[guest]
    path = tmp_path / f"{guest}.rec"
    image = ["--guest", str(GUESTS / guest)] if guest.endswith(".bin") and guest != "demo.bin" else []
    if guest.endswith(".elf"):
        image = ["-k", str(GUESTS / guest)]
        if guest == "mbtest.elf":
            module = tmp_path / "mbtest.env"
            module.write_text("GREETING=hello\nANSWER=42\n")
            image += ["-i", str(module)]
    _record(path, *image, *_virtio_disk(tmp_path, guest), *args, statuses=statuses)
    divergences, seen, _ = _replay_in_process(path)
    assert divergences == 0 and kinds <= seen, f"missing kinds {sorted(kinds - seen)}"


@pytest.mark.parametrize("guest", sorted(ASSISTED))
def test_the_syscall_assisted_guests_round_trip_with_no_divergence(tmp_path: Path, guest: str) -> None:
    path = tmp_path / f"{guest}.rec"
    config = MachineConfig(mem_size=64 * MiB, cpus=ASSISTED[guest], serial_output=lambda data: None)
    with open(path, "wb") as out, Machine(config) as machine:
        recorder = Recorder(out, recording_header(config, [], machine, guest))
        recorder.attach(machine)
        machine.load_flat64(packaged_guest(guest.removesuffix(".bin")))
        machine.enable_syscall_assist((0x90000, 0x91000, 0x92000))  # the guests' SPARE_TABLES
        status = machine.run(timeout=60)
        recorder.close()
    assert status == 1
    assert _replay_in_process(path)[0] == 0


def test_a_run_past_its_record_limit_runs_on_and_its_recording_replays_as_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.rec"
    run = broiler_cli("run", "--timeout=60", "--record", str(path), "--record-limit", "6K")
    assert run.returncode == exitcodes.OK, run.stderr  # the demo still ran to its power-off
    assert "guest powered off" in run.stdout + run.stderr
    said = [line for line in run.stderr.splitlines() if "--record-limit" in line]
    assert len(said) == 1 and "recording stopped, the VM runs on" in said[0]
    assert path.stat().st_size <= 6 << 10
    status, output = _replay(path)
    assert status == exitcodes.OK, output
    assert "cut by its --record-limit" in output and output.splitlines()[-1].endswith("no divergence")


@pytest.fixture(scope="module")
def virtio_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """virtio_blk_test.elf over the legacy interface with INTx: pio doorbells, the ISR and a level line."""
    folder = tmp_path_factory.mktemp("virtio")
    disk = folder / "disk.img"
    disk.write_bytes(bytes(DISK_SECTORS * 512))
    path = folder / "virtio.rec"
    cmdline = guest_cmdline("legacy", "intx", False)
    _record(path, "-k", str(GUESTS / "virtio_blk_test.elf"), "--disk", f"{disk},serial={SERIAL}", "-p", cmdline)
    disk.unlink()  # replay needs no image
    return path


def test_a_virtio_blk_run_replays_without_its_disk(virtio_recording: Path) -> None:
    divergences, kinds, _ = _replay_in_process(virtio_recording)
    assert divergences == 0 and {rec.VIRTIO_WORK, rec.DISK, rec.IRQ_LEVEL, rec.KICK_PIO} <= kinds


def test_a_changed_virtio_blk_config_value_is_exactly_the_divergence(
    virtio_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(block_device, "SEG_MAX", block_device.SEG_MAX - 1)
    (only,) = _replay_divergences(virtio_recording)  # the guest reads seg_max once, through the legacy BAR
    assert only.cause.startswith("pio read ") and only.cause.endswith("/4 value 0xfe")
    assert (only.recorded, only.now) == ("0xfe", "0xfd")


def test_a_changed_virtio_blk_status_byte_is_exactly_the_divergence(
    virtio_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(block_request, "S_IOERR", 3)  # the guest sends requests that must fail with IOERR (1)
    found = _replay_divergences(virtio_recording)
    assert found
    for divergence in found:  # each such request: its status byte, and nothing else
        assert divergence.cause.startswith("virtio-blk IO thread of virtio-blk0")
        assert divergence.recorded.startswith("DMA write 1 bytes at ") and divergence.recorded.endswith("(01)")
        assert divergence.now == divergence.recorded.replace("(01)", "(03)")


def test_a_virtio_recording_cut_short_is_one_line_and_status_2(virtio_recording: Path, tmp_path: Path) -> None:
    data = virtio_recording.read_bytes()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(data[: len(data) * 2 // 3])
    status, output = _replay(cut)
    assert status == exitcodes.USAGE and len(output.splitlines()) == 1 and "truncated or corrupt" in output
