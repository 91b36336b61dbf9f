"""``--device``s for the snapshot tests of users' scheduled work (docs/api.md "Snapshots"). On the guest's first
write each schedules ``delay`` seconds of work with ``ctx.schedule`` and appends "scheduled" to ``log``; the work
appends "done". ``SlowWork`` keeps no state, so a snapshot must refuse while its work is pending;
``CarriedWork`` saves the work's time left and schedules it again in its ``load_state``."""

from __future__ import annotations

from typing import Any

from broiler.api import DeviceContext


class SlowWork:
    size = 8

    def __init__(self, log: str, delay: int | str = 60) -> None:
        self.delay = float(delay)
        self.out = open(log, "a")  # noqa: SIM115 -- lives as long as the VM; append: a restore goes on
        self.ctx: DeviceContext | None = None
        self.started = False
        self.handle: Any = None

    def attach(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.started:
            self.started = True
            self._schedule(self.delay)
            self._log("scheduled")

    def _schedule(self, seconds: float) -> None:
        assert self.ctx is not None
        self.handle = self.ctx.schedule(seconds, self.finish)

    def finish(self) -> None:
        self.handle = None
        self._log("done")

    def _log(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


class CarriedWork(SlowWork):
    def save_state(self) -> dict[str, Any]:
        left = None if self.handle is None else int(self.handle.remaining() * 1e6)  # running time, in µs
        return {"started": self.started, "left_us": left}

    def load_state(self, state: dict[str, Any]) -> None:
        self.started = bool(state["started"])
        left = state["left_us"]
        if left is not None:
            self._schedule(min(int(left), int(self.delay * 1e6)) / 1e6)  # a file may say anything: at most delay
