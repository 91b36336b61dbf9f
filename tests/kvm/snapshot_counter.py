"""A ``--device`` for the snapshot tests: appends "VCPU NUMBER" lines to ``log`` for each count the
pause_count guest writes (port base + 4 * vCPU), flushed at once so another process can read them."""

from __future__ import annotations

from broiler.api import Device


class Counter(Device):
    name = "snapshot-counter"

    def __init__(self, log: str) -> None:
        super().__init__()
        self.out = open(log, "a")  # noqa: SIM115 -- lives as long as the VM; append: a restore goes on

    def write(self, offset: int, size: int, value: int) -> None:
        self.out.write(f"{offset // 4} {value}\n")
        self.out.flush()
