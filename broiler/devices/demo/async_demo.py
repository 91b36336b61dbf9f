"""The seed's asynchronous demo devices (spec §6.1, §6.2): a doorbell, delayed work, an interrupt.

The guest rings the doorbell; KVM catches the write (ioeventfd), so the vCPU never leaves KVM_RUN.
The event loop gets the kick and hands it to the device's ``DoorbellEngine``
(``broiler/devices/doorbell_engine.py``): the device "works" for ``delay`` seconds (a timer, not a
sleeping thread), then completes: it counts the completed requests, latches STATUS.DONE and
interrupts.

**Kicks that arrive while busy coalesce** (the engine's one rule): they are counted and marked
pending, and when the current run completes one more run covers all of them. A run completes every
request accepted before it started, so COMPLETIONS still counts requests (a guest that rings 400 times
reads 400), but a flood of kicks costs one timer and one interrupt per *run*, never per kick.

Register map (every device below; offsets from its base)::

    +0x0 DOORBELL     write: a request. KVM catches writes of the doorbell's width; any other write
                      here is trapped and rings the same doorbell (counted apart as
                      ``trapped_kicks``). Reads return 0.
    +0x4 IRQ_NUM      read (4 bytes): the interrupt line (GSI) this device raises.
    +0x8 STATUS       read: bit 0 DONE (a completion not yet acknowledged), bit 1 BUSY (requests not
                      yet completed). write 1 to bit 0: acknowledge -- clears DONE and lowers a level
                      line.
    +0xC COMPLETIONS  read (4 bytes): requests completed since reset.

Broiler raises its INTx line and never lowers it; the STATUS acknowledge is our addition. Each
completed run raises the line again, so a guest that acknowledges in its handler takes one interrupt
per run; requests that complete before the acknowledge share one interrupt (level semantics) but are
all counted in COMPLETIONS.

Devices (Broiler's addresses and doorbell widths):

    async-pio    ports 0x60A0-0x60AF   2-byte PIO doorbell, ISA line, level
    async-mmio   0xD0000040-0xD000004F 4-byte MMIO doorbell, ISA line, level
    vpic         ports 0x6020-0x602F   2-byte PIO doorbell, ISA line through the 8259 PIC, level
    vioapic      ports 0x6040-0x604F   2-byte PIO doorbell, IOAPIC-only line (16+), edge through an irqfd
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from ...core.bus import Device, all_ones
from ...core.eventloop import Schedule
from ...core.irq import IrqLine
from ...core.state import check_keys, take_bool, take_int
from ..doorbell_engine import DoorbellEngine, Run

DOORBELL, IRQ_NUM, STATUS, COMPLETIONS = 0x0, 0x4, 0x8, 0xC
STATUS_DONE, STATUS_BUSY = 0x1, 0x2
BLOCK_SIZE = 0x10
DEFAULT_DELAY = 0.05  # seconds; Broiler sleeps 2 s (5 s for vIOAPIC): `--async-delay 2` reproduces it


@dataclass(frozen=True)
class AsyncSpec:
    name: str
    pio: bool
    base: int
    doorbell_width: int
    irq_kind: str  # "isa" or "ioapic" (see broiler/core/irq.py)
    edge: bool = False


ASYNC_PIO = AsyncSpec("async-pio", True, 0x60A0, 2, "isa")
ASYNC_MMIO = AsyncSpec("async-mmio", False, 0xD000_0040, 4, "isa")
VPIC = AsyncSpec("vpic", True, 0x6020, 2, "isa")
VIOAPIC = AsyncSpec("vioapic", True, 0x6040, 2, "ioapic", edge=True)
ASYNC_DEVICES = (VPIC, VIOAPIC, ASYNC_PIO, ASYNC_MMIO)


class AsyncDemo(Device):
    def __init__(self, spec: AsyncSpec, line: IrqLine, schedule: Schedule, delay: float = DEFAULT_DELAY) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.line = line
        self.engine = DoorbellEngine(schedule, delay, on_complete=self._complete)
        self._lock = threading.Lock()
        self.trapped_kicks = 0  # kicks that came through a trapped (sync) write
        self.done = False

    # -- what the engine counts, under the names the reports use -----------------------------------
    @property
    def requests(self) -> int:
        """Kicks accepted (both paths)."""
        return self.engine.kicks

    @property
    def completions(self) -> int:
        """Requests completed (every kick a finished run covered)."""
        return self.engine.kicks_completed

    @property
    def in_flight(self) -> int:
        return self.engine.kicks - self.engine.kicks_completed

    @property
    def completion_log(self) -> deque[Run]:
        """The last runs, oldest first (bounded: see ``doorbell_engine.LOG_SIZE``)."""
        return self.engine.log

    # -- snapshot: a run in flight completes after the restore ----------------------------------------
    def save_state(self) -> dict[str, Any]:
        with self._lock:
            done = self.done
        return {"done": done, "trapped_kicks": self.trapped_kicks, "engine": self.engine.save_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("done", "trapped_kicks", "engine"), self.name)
        done, trapped = take_bool(saved, "done", self.name), take_int(saved, "trapped_kicks", self.name)
        self.engine.load_state(saved["engine"], self.name)
        with self._lock:
            self.done, self.trapped_kicks = done, trapped
        if done and not self.spec.edge:  # an unacknowledged completion holds a level line high
            self.line.set_level(True)

    # -- doorbell (event-loop thread, or a vCPU thread for trapped writes) ------------------------
    def ring(self, kicks: int = 1) -> None:
        self.engine.kick(kicks)

    def _complete(self, run: Run, result: int) -> None:
        with self._lock:
            self.done = True
        if self.spec.edge:
            self.line.pulse()
        else:
            self.line.set_level(True)

    # -- registers (vCPU threads) -------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == DOORBELL:
            return 0
        if size != 4 or offset not in (IRQ_NUM, STATUS, COMPLETIONS):
            self.guest_error(f"{size}-byte read at +{offset:#x}")
            return all_ones(size)
        if offset == IRQ_NUM:
            return self.line.gsi
        if offset == STATUS:
            with self._lock:
                return (STATUS_DONE if self.done else 0) | (STATUS_BUSY if self.in_flight else 0)
        return self.completions & 0xFFFFFFFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DOORBELL:
            self.trapped_kicks += 1
            self.ring(1)
        elif offset == STATUS and size == 4:
            if value & STATUS_DONE:
                with self._lock:
                    self.done = False
                if not self.spec.edge:
                    self.line.set_level(False)
        else:
            self.guest_error(f"{size}-byte write at +{offset:#x} ignored")
