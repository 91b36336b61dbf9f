#!/usr/bin/env python3
"""Run the examples: each device with its guest, through the public API and through `broiler run --device`.

    python examples/run.py              # every example, both ways
    python examples/run.py counter      # one of: counter, pci_doubler, async_checksum

Each guest returns its failure count through the debug-exit port, so status 1 means every check passed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the device modules sit next to this script

from async_checksum import AsyncChecksum  # noqa: E402
from counter import Counter  # noqa: E402
from pci_doubler import PciDoubler  # noqa: E402

from broiler.api import Machine, MachineConfig, device_stats  # noqa: E402

# name: (how to make the device, where it goes for add_device, the same as a --device option)
EXAMPLES: dict[str, tuple[Callable[[], Any], dict[str, Any], str]] = {
    "counter": (lambda: Counter(), {"pio": 0x700, "size": 4}, "counter.py:Counter,pio=0x700,size=4"),
    "pci_doubler": (lambda: PciDoubler(), {}, "pci_doubler.py:PciDoubler,pci"),
    "async_checksum": (lambda: AsyncChecksum(), {"pio": 0x720}, "async_checksum.py:AsyncChecksum,pio=0x720"),
}


def run_api(name: str, timeout: float = 60) -> tuple[int, str]:
    """Through the public API: a machine without the demo devices, the device, the guest; (status, output)."""
    make, where, _ = EXAMPLES[name]
    output: list[bytes] = []
    with Machine(MachineConfig(demo_devices=False, serial_output=output.append)) as machine:
        machine.add_device(make(), **where)
        machine.load_flat64((HERE / f"{name}.bin").read_bytes())
        status = machine.run(timeout=timeout)
        for row in device_stats(machine):
            print(f"  {row['device']}: {row['reads']} reads, {row['writes']} writes, {row['doorbell_kicks']} kicks")
    return status, b"".join(output).decode(errors="replace")


def run_cli(name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The same run from the command line: `broiler run --guest NAME.bin --device FILE.py:CLASS,...`."""
    option = EXAMPLES[name][2]
    command = [sys.executable, "-m", "broiler", "run", "--no-demo-devices", f"--timeout={timeout}"]
    command += ["--guest", str(HERE / f"{name}.bin"), "--device", str(HERE / option)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30)


def main(names: list[str]) -> int:
    failed = 0
    for name in names or list(EXAMPLES):
        status, output = run_api(name)
        print(f"{name} (API): status {status}\n{output}", end="")
        cli = run_cli(name)
        print(f"{name} (--device): status {cli.returncode}\n{cli.stdout}{cli.stderr}", end="")
        failed += (status, cli.returncode) != (1, 1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
