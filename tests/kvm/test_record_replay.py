"""Record real guests with `broiler run --record`, then replay them offline (issue 16 item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.devices.demo import sync_demo
from broiler.vmm import recording as rec
from broiler.vmm.replay import Replayer, replay_config
from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli

pytestmark = pytest.mark.kvm


def _record(path: Path, *args: str) -> None:
    run = broiler_cli("run", "--timeout=60", "--record", str(path), *args)
    assert run.returncode in (exitcodes.OK, 1), run.stderr  # the demo powers off; test guests exit 0 failures → 1
    assert path.stat().st_size > 0


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


def test_the_pci_test_guest_replays_with_no_divergence(tmp_path: Path) -> None:
    path = tmp_path / "pci.rec"
    _record(path, "--guest", "broiler/guests/pci_test.bin", "--async-delay", "0", "-m", "64M")
    with open(path, "rb") as f:
        rec.read_header(f, str(path))
        kinds = {event.kind for event in rec.read_events(f, str(path))}
    assert {rec.DMA_WRITE, rec.MSI, rec.IRQ_LEVEL, rec.KICK_MMIO, rec.TIMER_FIRED} <= kinds  # all paths seen
    status, output = _replay(path)
    assert status == exitcodes.OK, output


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
