"""`--trace`: one line per IO event, for watching each path work.

Events: ``pio`` and ``mmio`` (sync exits, including unmapped ones), ``coalesced`` (writes replayed
from the ring), ``doorbell`` (ioeventfd kicks reaching the event loop), ``irq`` (line changes and
MSIs). Each line: time since start, vCPU (or ``-`` off the vCPU threads), path, r/w, address, size,
value, device. ``--trace-json`` writes the same as JSON lines.

Tracing costs nothing when off: the tracer is a ``core/observe.Observer``; attaching it puts each bus
region's device behind an ``ObservedDevice`` proxy (and hooks the doorbell, coalesced, DMA and IRQ paths,
which are not per-exit hot). Without ``--trace`` (or ``--record``) no proxy exists.
"""

from __future__ import annotations

import json
import threading
import time
from typing import IO, TYPE_CHECKING

from ..core.bus import Bus
from ..core.observe import Observer, attach_observer, observe_bus
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..vmm.machine import Machine

KINDS = ("pio", "mmio", "coalesced", "doorbell", "irq", "dma")


def parse_kinds(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if "all" in kinds:
        return frozenset(KINDS)
    unknown = kinds - set(KINDS)
    if unknown or not kinds:
        raise ConfigError(
            f"--trace takes a comma-separated list of {', '.join(KINDS)} or all; "
            f"not {', '.join(sorted(unknown)) or repr(text)}"
        )
    return kinds


def _vcpu_name() -> str:
    name = threading.current_thread().name
    return name[len("broiler-vcpu") :] if name.startswith("broiler-vcpu") else "-"


class Tracer(Observer):
    def __init__(self, kinds: frozenset[str], out: IO[str], *, as_json: bool = False) -> None:
        self.kinds = kinds
        self.out = out
        self.as_json = as_json
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self.lines = 0

    def emit(self, kind: str, rw: str, addr: int, size: int, value: int | None, device: str) -> None:
        if kind not in self.kinds:
            return
        rw = "w" if rw in ("p", "m") else rw  # coalesced writes and kicks name their bus here
        t = time.monotonic() - self.t0
        vcpu = _vcpu_name()
        if self.as_json:
            line = json.dumps(
                {
                    "t": round(t, 6),
                    "vcpu": vcpu,
                    "path": kind,
                    "rw": rw,
                    "addr": addr,
                    "size": size,
                    "value": value,
                    "device": device,
                }
            )
        else:
            shown = "-" if value is None else f"{value:#x}"
            line = f"{t:12.6f} vcpu {vcpu:>2} {kind:9} {rw} {addr:#014x} {size} {shown:>18}  {device}"
        with self._lock:
            self.out.write(line + "\n")
            self.lines += 1

    def dma(self, rw: str, gpa: int, data: bytes) -> None:
        self.emit("dma", rw, gpa, len(data), None, "device memory")

    def attach(self, machine: Machine) -> None:
        attach_observer(machine, self)
        machine.tracer = self

    def _wrap_bus(self, kind: str, bus: Bus) -> None:
        observe_bus(bus, self, kind)

    def flush(self) -> None:
        with self._lock:
            self.out.flush()
