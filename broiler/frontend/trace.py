"""`--trace`: one line per IO event, for watching each path work.

Events: ``pio`` and ``mmio`` (sync exits, including unmapped ones), ``coalesced`` (writes replayed
from the ring), ``doorbell`` (ioeventfd kicks reaching the event loop), ``irq`` (line changes and
MSIs). Each line: time since start, vCPU (or ``-`` off the vCPU threads), path, r/w, address, size,
value, device. ``--trace-json`` writes the same as JSON lines.

Tracing costs nothing when off: instead of a flag tested on every exit, ``Tracer.attach`` swaps each
bus region's device for a ``TracedDevice`` proxy (and hooks the doorbell, coalesced and IRQ paths,
which are not per-exit hot). Without ``--trace`` no proxy exists.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..core.bus import Bus, Device
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..vmm.machine import Machine

KINDS = ("pio", "mmio", "coalesced", "doorbell", "irq")


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


class Tracer:
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

    def attach(self, machine: Machine) -> None:
        for kind, bus in (("pio", machine.pio_bus), ("mmio", machine.mmio_bus)):
            if kind in self.kinds or "coalesced" in self.kinds:
                self._wrap_bus(kind, bus)
        machine.irqs.set_tracer(self)
        machine.doorbells.tracer = self
        machine.tracer = self

    def _wrap_bus(self, kind: str, bus: Bus) -> None:
        for region in bus.regions():
            if not isinstance(region.device, TracedDevice):
                region.inner = region.inner or region.device
                region.device = TracedDevice(region.inner, self, kind, region.base, region.name)
        unmapped = bus._unmapped
        tracer = self

        def read(addr: int, size: int, _orig: Callable[[int, int], int] = unmapped.read) -> int:
            value = _orig(addr, size)
            tracer.emit(kind, "r", addr, size, value, "(unmapped)")
            return value

        def write(addr: int, size: int, value: int, _orig: Callable[[int, int, int], None] = unmapped.write) -> None:
            tracer.emit(kind, "w", addr, size, value, "(unmapped)")
            _orig(addr, size, value)

        bus._unmapped = _TracedUnmapped(read, write)
        bus.cache = {}
        bus.wrap_device = lambda device, base, name: TracedDevice(device, tracer, kind, base, name)

    def flush(self) -> None:
        with self._lock:
            self.out.flush()


class _TracedUnmapped:
    def __init__(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        self.read = read
        self.write = write
        self.replay = write


class TracedDevice(Device):
    """Forwards to the real device and emits a trace line per access."""

    def __init__(self, inner: Device, tracer: Tracer, kind: str, base: int, name: str) -> None:
        self.__dict__["inner"] = inner
        self.__dict__["_t"] = (tracer, kind, base, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["inner"], name, value)

    def read(self, offset: int, size: int) -> int:
        tracer, kind, base, name = self.__dict__["_t"]
        value = self.inner.read(offset, size)
        tracer.emit(kind, "r", base + offset, size, value, name)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        tracer, kind, base, name = self.__dict__["_t"]
        tracer.emit(kind, "w", base + offset, size, value, name)
        self.inner.write(offset, size, value)

    def coalesced_write(self, offset: int, size: int, value: int) -> None:
        tracer, _, base, name = self.__dict__["_t"]
        tracer.emit("coalesced", "w", base + offset, size, value, name)
        self.inner.coalesced_write(offset, size, value)
