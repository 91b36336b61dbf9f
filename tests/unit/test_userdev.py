"""Users' devices (issue 16): --device parsing and loading errors, the fault guard, the public API module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import broiler.api
from broiler import exitcodes
from broiler.core.guard import GuardedDevice
from broiler.errors import ConfigError
from broiler.frontend.cli import main
from broiler.vmm.machine import MachineConfig
from broiler.vmm.platform import PlatformSketch
from broiler.vmm.userdev import parse_device_spec
from tests.conftest import ROOT

COUNTER = str(ROOT / "examples" / "counter.py")

BAD_DEVICE = """
class Bad:
    def __init__(self, mode: str = "raise", fail: int = 0) -> None:
        if fail:
            raise ValueError("fail was set")
        self.mode = mode

    def read(self, offset, size):
        return self._answer(offset)

    def _answer(self, offset):
        if self.mode == "raise":
            raise KeyError(offset)
        return None if self.mode == "none" else 1 << 40

    def write(self, offset, size, value):
        raise RuntimeError("read-only")
"""


@pytest.fixture
def bad_device(tmp_path: Path) -> Path:
    path = tmp_path / "bad.py"
    path.write_text(BAD_DEVICE)
    return path


def test_parse_a_spec_with_constructor_arguments() -> None:
    spec = parse_device_spec(f"{COUNTER}:Counter,pio=0x700,size=4,start=0x10,label=hello")
    assert (spec.placement, spec.base, spec.size) == ("pio", 0x700, 4)
    assert spec.kwargs == {"start": 16, "label": "hello"}
    assert parse_device_spec("pkg.mod:Cls,pci").placement == "pci"
    assert parse_device_spec("pkg.mod:Cls,mmio=0xd0001000").base == 0xD0001000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("counter.py,pio=1", "FILE.py:CLASS"),
        ("m:C", "say where it goes"),
        ("m:C,pio=0x700,mmio=0x1000", "one of"),
        ("m:C,pio=zz", "'zz' is not a number"),
        ("m:C,pci=3", "bare pci"),
        ("m:C,pci,size=4", "sizes its own BARs"),
        ("m:C,pio=1,junk", "is not KEY=VALUE"),
    ],
)
def test_bad_specs_are_one_config_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_device_spec(text)
    assert text in str(info.value) and "\n" not in str(info.value)


def _layout(capsys: pytest.CaptureFixture[str], *device: str) -> tuple[int, str, str]:
    status = main(["layout", "--no-demo-devices", *(a for d in device for a in ("--device", d))])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("/nonexistent/dev.py:Counter,pio=0x700", "no such file"),
        (f"{COUNTER}:Nope,pio=0x700", "no class 'Nope'"),
        ("no_such_module_xyz:Cls,pio=0x700", "cannot import module"),
        (f"{COUNTER}:Counter,pio=0x3f8", "overlaps ttyS0"),
        (f"{COUNTER}:Counter,pio=0x10000", "outside the bus"),
        (f"{COUNTER}:Counter,pci", "needs a PciFunction"),
        (f"{COUNTER}:Counter,pio=0x700,bogus=1", "raised TypeError"),
    ],
)
def test_device_errors_are_one_line_naming_the_device_exit_2(
    capsys: pytest.CaptureFixture[str], device: str, says: str
) -> None:
    status, _, err = _layout(capsys, device)
    assert status == exitcodes.USAGE
    assert err.count("\n") == 1 and says in err and any(n in err for n in ("Counter", "Cls", "Nope")), err


def test_a_raising_constructor_and_a_second_device_on_the_same_port(
    capsys: pytest.CaptureFixture[str], bad_device: Path
) -> None:
    status, _, err = _layout(capsys, f"{bad_device}:Bad,pio=0x700,fail=1")
    assert status == exitcodes.USAGE and "Bad(fail=1) raised ValueError: fail was set" in err
    status, _, err = _layout(capsys, f"{COUNTER}:Counter,pio=0x700", f"{bad_device}:Bad,pio=0x700")
    assert status == exitcodes.USAGE and "'Bad'" in err and "overlaps Counter" in err


def test_layout_shows_where_a_device_sits(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _layout(capsys, f"{COUNTER}:Counter,pio=0x700,size=4", f"{COUNTER}:Counter,mmio=0xd0002000")
    assert status == 0
    assert "0700-0703 : Counter" in out
    assert "d0002000-d0002fff : Counter" in out


def _sketch_with(bad_device: Path, mode: str) -> tuple[PlatformSketch, GuardedDevice]:
    config = MachineConfig(
        demo_devices=False, devices=[parse_device_spec(f"{bad_device}:Bad,pio=0x700,size=4,mode={mode}")]
    )
    sketch = PlatformSketch(config)
    region = sketch.pio_bus.find(0x700)
    assert region is not None and isinstance(region.device, GuardedDevice)
    return sketch, region.device


def test_a_raising_read_is_reported_with_the_device_frames_only(
    bad_device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sketch, _ = _sketch_with(bad_device, "raise")
    assert sketch.pio_bus.read(0x700, 2) == 0xFFFF  # answered like nothing there
    report = sketch.device_faults[0]
    first, *rest = report.splitlines()
    assert first == f"device 'Bad' failed on a 2-byte read at port 0x700: KeyError: 0 ({bad_device}:13)"
    frames = [line for line in rest if line.startswith('  File "')]
    assert frames and all(str(bad_device) in line for line in frames)  # nothing of broiler's
    assert f"broiler: {first}" in capsys.readouterr().err


@pytest.mark.parametrize(("mode", "says"), [("none", "read returned None, not an int"), ("big", "does not fit in 4")])
def test_a_read_returning_a_bad_value_is_a_fault(bad_device: Path, mode: str, says: str) -> None:
    sketch, _ = _sketch_with(bad_device, mode)
    assert sketch.pio_bus.read(0x700, 4) == 0xFFFFFFFF
    assert says in sketch.device_faults[0] and f"({bad_device}:8)" in sketch.device_faults[0]


def test_a_raising_write_names_the_value(bad_device: Path) -> None:
    sketch, _ = _sketch_with(bad_device, "none")
    sketch.pio_bus.write(0x701, 1, 0x5A)
    assert "a 1-byte write of 0x5a at port 0x701: RuntimeError: read-only" in sketch.device_faults[0]


def test_a_healthy_device_passes_through_and_stats_see_it() -> None:
    config = MachineConfig(demo_devices=False, devices=[parse_device_spec(f"{COUNTER}:Counter,pio=0x700,size=4")])
    sketch = PlatformSketch(config)
    sketch.pio_bus.write(0x700, 4, 7)
    assert [sketch.pio_bus.read(0x700, 4) for _ in range(3)] == [7, 8, 9]
    assert sketch.device_faults == []


def test_import_broiler_is_bare_and_the_api_names_resolve() -> None:
    code = "import sys, broiler; print(sorted(m for m in sys.modules if m.startswith('broiler')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "['broiler']"
    assert all(getattr(broiler.api, name, None) is not None for name in broiler.api.__all__)
    assert {"Machine", "MachineConfig", "Device", "PciFunction", "DeviceContext", "DoorbellEngine"} <= set(
        broiler.api.__all__
    )
