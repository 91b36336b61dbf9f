"""The examples in examples/ (issue 16) run as documented, through the API and `broiler run --device`;
a device that misbehaves under a real guest stops the VM with DEVICE_FAULT and its own report."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from broiler import exitcodes
from tests.conftest import ROOT
from tests.kvm.helpers import broiler_cli, passed

pytestmark = pytest.mark.kvm


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_run", ROOT / "examples" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()
SAYS = {
    "counter": "counter: ok",
    "pci_doubler": "pci-doubler: 21 doubled is 42, 1 interrupt",
    "async_checksum": "async-checksum: irq 5, sum 24356",
}


@pytest.mark.parametrize("name", sorted(SAYS))
def test_example_through_the_api(name: str) -> None:
    status, output = RUNNER.run_api(name, timeout=30)
    assert passed(status), output
    assert SAYS[name] in output


@pytest.mark.parametrize("name", sorted(SAYS))
def test_example_through_device_option(name: str) -> None:
    run = RUNNER.run_cli(name, timeout=30)
    assert passed(run.returncode), run.stdout + run.stderr
    assert SAYS[name] in run.stdout


def test_the_counter_example_is_at_most_20_lines_with_its_guest() -> None:
    lines = sum(len((ROOT / "examples" / f).read_text().splitlines()) for f in ("counter.py", "counter.c"))
    assert lines <= 20


@pytest.mark.parametrize("mode", ["raise", "none"])
def test_a_faulty_device_under_a_real_guest_stops_the_vm(tmp_path: Path, mode: str) -> None:
    device = tmp_path / "faulty.py"
    device.write_text(
        "class Faulty:\n"
        "    def read(self, offset, size):\n"
        "        return None if self.mode == 'none' else 1 // 0\n"
        "    def write(self, offset, size, value):\n"
        "        pass\n"
        "    def __init__(self, mode):\n"
        "        self.mode = mode\n"
    )
    run = broiler_cli(
        "run",
        "--no-demo-devices",
        "--timeout=30",
        "--guest",
        str(ROOT / "examples" / "counter.bin"),
        "--device",
        f"{device}:Faulty,pio=0x700,size=4,mode={mode}",
    )
    assert run.returncode == exitcodes.DEVICE_FAULT, run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("broiler: device 'Faulty' failed on a 4-byte read at port 0x700: ")
    assert f"({device}:{3 if mode == 'raise' else 2})" in first  # the raise, or the read method
    assert "Traceback (most recent call last)" not in run.stderr  # no broiler traceback
    frames = [line for line in run.stderr.splitlines() if line.startswith('  File "')]
    assert all(str(device) in line for line in frames)
    assert (mode == "raise") == bool(frames) and "counter: ok" not in run.stdout
