"""An async doorbell device with DMA: the guest points ADDR/LEN at a buffer in its RAM and rings the
doorbell; the device's "work" (on the event loop, ``delay`` seconds later) sums the bytes, writes the
sum into guest RAM right after the buffer, and raises its interrupt line.

Ports (base + offset, 4-byte registers): DOORBELL +0 (2-byte write; an ioeventfd, so it does not exit),
IRQ +4 (RO, the line's GSI), STATUS +8 (bit 0 DONE, bit 1 ERROR; write the bits to acknowledge, which
lowers the line), COMPLETIONS +0xC, ADDR +0x10, LEN +0x14, SUM +0x18 (RO).

Snapshots (docs/api.md): the registers and the engine, whose load_state schedules a run in flight again.
"""

import threading
from typing import Any

from broiler.api import DeviceContext, DoorbellEngine, GuestMemoryError, IrqLine, Run, all_ones

DOORBELL, IRQ, STATUS, COMPLETIONS, ADDR, LEN, SUM = 0x0, 0x4, 0x8, 0xC, 0x10, 0x14, 0x18
DONE, ERROR = 1, 2
SAVED = (STATUS, COMPLETIONS, ADDR, LEN, SUM)
MAX_LEN = 1 << 20  # a hostile LEN must not make the device read without bound


class AsyncChecksum:
    size = 0x20

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = float(delay)
        self.lock = threading.Lock()
        self.regs = {STATUS: 0, COMPLETIONS: 0, ADDR: 0, LEN: 0, SUM: 0}
        self.line: IrqLine | None = None
        self.engine: DoorbellEngine | None = None

    def attach(self, ctx: DeviceContext) -> None:
        self.memory = ctx.memory
        self.line = ctx.irq_line("isa")
        self.engine = DoorbellEngine(ctx.schedule, self.delay, on_start=self.work, on_complete=self.complete)
        ctx.add_doorbell(DOORBELL, 2, self.engine.kick)

    def work(self, run: Run) -> int:  # at the doorbell: DMA-read the buffer, DMA-write the sum after it
        with self.lock:
            addr, length = self.regs[ADDR], self.regs[LEN]
        if length > MAX_LEN:
            return ERROR
        try:
            total = sum(self.memory.read(addr, length)) & 0xFFFFFFFF
            self.memory.write_int(addr + length, 4, total)
        except GuestMemoryError:
            return ERROR
        with self.lock:
            self.regs[SUM] = total
        return 0

    def complete(self, run: Run, result: int) -> None:  # `delay` seconds later: publish and interrupt
        with self.lock:
            self.regs[STATUS] |= result or DONE
            self.regs[COMPLETIONS] += run.kicks
        assert self.line is not None
        self.line.set_level(True)

    def read(self, offset: int, size: int) -> int:
        if offset == IRQ and size == 4 and self.line is not None:
            return self.line.gsi
        with self.lock:
            return self.regs.get(offset, all_ones(size)) if size == 4 else all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DOORBELL and self.engine is not None:  # trapped when the host has no ioeventfd
            self.engine.kick(1)
        elif offset == STATUS and size == 4 and self.line is not None:
            with self.lock:
                self.regs[STATUS] &= ~value
            self.line.set_level(False)
        elif offset in (ADDR, LEN) and size == 4:
            with self.lock:
                self.regs[offset] = value

    def save_state(self) -> dict[str, Any]:
        assert self.engine is not None
        with self.lock:
            return {"regs": [self.regs[r] for r in SAVED], "engine": self.engine.save_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        regs = state["regs"]  # from a file: check it
        if not isinstance(regs, list) or len(regs) != len(SAVED) or not all(_u32(v) for v in regs):
            raise ValueError(f"regs must be {len(SAVED)} 32-bit values")
        assert self.engine is not None and self.line is not None
        with self.lock:
            self.regs = dict(zip(SAVED, regs, strict=True))
        self.engine.load_state(state["engine"], "async-checksum")  # a run in flight is scheduled again
        self.line.set_level(bool(self.regs[STATUS]))  # a completion not yet acknowledged keeps its line up


def _u32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF
