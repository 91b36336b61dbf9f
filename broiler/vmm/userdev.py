"""A user's device on a machine: ``--device FILE.py:CLASS,pio=PORT`` and ``Machine.add_device``.

A user's device is any object with ``read(offset, size) -> int`` and ``write(offset, size, value)`` (a
``broiler.Device`` subclass or a plain class), or a ``PciFunction`` subclass. If it has an
``attach(ctx)`` method, broiler calls it once before the device goes on a bus, with a ``DeviceContext``:
guest memory, a timer, interrupt lines, MSI and doorbells, all named after the device.

Every user device is wrapped at registration in a ``GuardedDevice`` (core/guard.py), and its doorbell
and timer callbacks in ``guard_callback``: a device that raises, or answers a read with a non-int or a
value too large for the access, stops the VM with ``exitcodes.DEVICE_FAULT`` and a report naming the
device, the access and its own code. broiler's built-in devices are registered bare.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import exitcodes
from ..core.bus import Device, MmioBus, PioBus, Region
from ..core.eventloop import EventLoop, Timer
from ..core.guard import GuardedDevice, guard_callback
from ..core.ioeventfd import Doorbells
from ..core.irq import IrqLine, MsiMessage
from ..core.memory import GuestMemory
from ..core.observe import DeviceMemory
from ..errors import ConfigError, SnapshotError
from ..pci import PciFunction, PciHost

MAX_FAULT_REPORTS = 16  # later faults (other vCPUs, while stopping) are counted, not kept
DEFAULT_PIO_SIZE = 1
DEFAULT_MMIO_SIZE = 0x1000
PRUNE_PENDING_AT = 256  # a device's pending-work set is swept of cancelled entries past this size


class _Interrupts(Protocol):
    def alloc_line(self, owner: str, kind: str = "isa") -> Any: ...

    def send_msi(self, message: MsiMessage) -> None: ...


class DeviceHost(Protocol):
    """What a user's device needs from a machine: ``Machine`` and ``PlatformSketch`` (layout) both are one."""

    pio_bus: PioBus
    mmio_bus: MmioBus
    pci: PciHost | None
    loop: EventLoop
    doorbells: Doorbells
    memory: GuestMemory
    dma_memory: DeviceMemory  # the same RAM, as devices see it (core/observe.DeviceMemory: DMA is observable)
    device_faults: list[str]
    user_contexts: list[DeviceContext]  # one per user device with attach(ctx): its pending work, for snapshots

    @property
    def irqs(self) -> Any: ...

    def add_pio(
        self, base: int, size: int, device: Any, *, owner: Hashable | None = ..., name: str | None = ...
    ) -> Region: ...

    def add_mmio(
        self, base: int, size: int, device: Any, *, owner: Hashable | None = ..., name: str | None = ...
    ) -> Region: ...

    def request_exit(self, status: int, reason: str) -> None: ...


@dataclass(frozen=True)
class DeviceSpec:
    """One ``--device`` argument, parsed: where the class is, where it goes, what its constructor gets."""

    text: str
    ref: str  # FILE.py:CLASS or MODULE:CLASS
    placement: str  # "pio", "mmio" or "pci"
    base: int | None = None
    size: int | None = None
    kwargs: dict[str, int | str] = field(default_factory=dict)


def _int(text: str, what: str, spec: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"--device {spec}: {what} {text!r} is not a number") from None


def parse_device_spec(text: str) -> DeviceSpec:
    """``REF,pio=PORT|mmio=ADDR|pci[,size=N][,KEY=VALUE...]``; KEY=VALUE go to the constructor."""
    ref, *options = text.split(",")
    if ref.count(":") != 1 or not all(ref.split(":")):
        raise ConfigError(f"--device {text}: expected FILE.py:CLASS or MODULE:CLASS before the first comma")
    placement, base, size, kwargs = "", None, None, {}
    for option in options:
        key, eq, value = option.partition("=")
        if key in ("pio", "mmio", "pci"):
            if placement:
                raise ConfigError(f"--device {text}: give one of pio=PORT, mmio=ADDR or pci")
            if (key == "pci") != (not eq):
                raise ConfigError(f"--device {text}: write pio=PORT, mmio=ADDR or a bare pci")
            placement, base = key, (_int(value, key, text) if eq else None)
        elif key == "size" and eq:
            size = _int(value, "size", text)
        elif eq and key.isidentifier():
            kwargs[key] = _constructor_value(value)
        else:
            raise ConfigError(f"--device {text}: {option!r} is not KEY=VALUE")
    if not placement:
        raise ConfigError(f"--device {text}: say where it goes: pio=PORT, mmio=ADDR or pci")
    if placement == "pci" and size is not None:
        raise ConfigError(f"--device {text}: a PCI function sizes its own BARs; drop size=")
    return DeviceSpec(text, ref, placement, base, size, kwargs)


def _constructor_value(text: str) -> int | str:
    try:
        return int(text, 0)
    except ValueError:
        return text


def load_device_class(ref: str) -> type:
    """The class ``ref`` names: ``path/to/file.py:Class`` or ``package.module:Class``."""
    where, _, class_name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"device {ref}: no such file {where!r}")
        spec = importlib.util.spec_from_file_location(f"broiler_device_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"device {ref}: cannot load {where!r} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"device {ref}: importing {where!r} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ConfigError(f"device {ref}: cannot import module {where!r}: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"device {ref}: no class {class_name!r} in {where!r}")
    return cls


def device_name(device: object) -> str:
    """The name reports use: the device's own ``name`` when it set one, else its class name."""
    name = getattr(device, "name", None)
    if isinstance(name, str) and name not in ("device", "pci-function"):
        return name
    return type(device).__name__


class DeviceContext:
    """What broiler hands a user's device in ``attach(ctx)``: everything it may touch, named after it.

    ``memory`` is guest RAM (``read(gpa, n)``, ``write(gpa, data)``, ``read_int``/``write_int``; an
    address outside RAM raises ``GuestMemoryError``). ``base`` is where the device sits (None on PCI).
    """

    def __init__(self, host: DeviceHost, device: object, name: str, pio: bool, base: int | None) -> None:
        self._host = host
        self.device = device
        self.name = name
        self.pio = pio
        self.base = base
        self.memory = host.dma_memory
        self._lock = threading.Lock()
        self._pending: set[_Work] = set()  # ctx.schedule calls not run yet (a snapshot asks)

    def _on_fault(self, report: str) -> None:
        report_fault(self._host, report)

    def schedule(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn()`` on the event-loop thread after ``delay`` seconds (the device's "work"). The handle has
        ``cancel()`` and ``remaining()``: running time left, which stands still while the VM is paused."""
        guarded = guard_callback(fn, self.name, "a timer callback", self._on_fault)
        work = _Work()

        def run() -> None:
            with self._lock:
                self._pending.discard(work)
            guarded()

        with self._lock:
            self._pending.add(work)
            if len(self._pending) > PRUNE_PENDING_AT:  # cancelled work never runs to take itself out
                self._pending = {w for w in self._pending if not w.cancelled}
        work.timer = self._host.loop.call_later(delay, run)
        return work.timer

    def pending_work(self) -> list[float]:
        """Seconds of running time left of each ``schedule`` call that has not run and was not cancelled."""
        with self._lock:
            return sorted(w.timer.remaining() if w.timer else 0.0 for w in self._pending if not w.cancelled)

    def irq_line(self, kind: str = "isa") -> IrqLine:
        """A fresh interrupt line: ``"isa"`` (PIC and IOAPIC) or ``"ioapic"`` (GSI 16 and up, level)."""
        line: IrqLine = self._host.irqs.alloc_line(self.name, kind)
        return line

    def send_msi(self, message: MsiMessage) -> None:
        """Deliver one MSI (what ``PciFunction.add_msi``/``add_msix`` take as their sink)."""
        self._host.irqs.send_msi(message)

    def add_doorbell(
        self, offset: int, length: int, callback: Callable[[int], None], datamatch: int | None = None
    ) -> None:
        """An ioeventfd at ``base + offset``: guest writes there do not exit; ``callback(kicks)`` runs on
        the event loop. PIO/MMIO devices only (a PCI function declares doorbells with its BARs)."""
        if self.base is None:
            raise ConfigError(f"device {self.name!r}: a PCI function declares doorbells in add_bar")
        self._host.doorbells.add(
            pio=self.pio,
            addr=self.base + offset,
            length=length,
            datamatch=datamatch,
            callback=guard_callback(callback, self.name, f"a doorbell at +{offset:#x}", self._on_fault),
            owner=self.name,
        )


class _Work:
    """One ``ctx.schedule`` call that has not run yet; ``timer`` once the event loop has given one."""

    __slots__ = ("timer",)

    def __init__(self) -> None:
        self.timer: Timer | None = None

    @property
    def cancelled(self) -> bool:
        return self.timer is not None and self.timer.cancelled


def carries_its_own_work(device: object) -> bool:
    """The device's class has a ``load_state`` of its own (for a PCI function, ``load_state`` or
    ``load_function_state``): only code the device's author wrote can schedule its work again."""
    if isinstance(device, PciFunction):
        fn = type(device)
        return (
            fn.load_state is not PciFunction.load_state or fn.load_function_state is not PciFunction.load_function_state
        )
    own = getattr(type(device), "load_state", None)
    return callable(own) and own is not Device.load_state and callable(getattr(device, "save_state", None))


def check_user_work_saved(host: DeviceHost) -> None:
    """Before a snapshot: refuse, naming the device, if one has ``ctx.schedule`` work pending that nothing
    would schedule again after a restore (docs/api.md "Snapshots" says why broiler does not save callbacks)."""
    for ctx in host.user_contexts:
        left = ctx.pending_work()
        if left and not carries_its_own_work(ctx.device):
            raise SnapshotError(
                f"device {ctx.name!r} has work scheduled with ctx.schedule (due in {left[0]:.3f} s) that a "
                "snapshot cannot carry: it has no load_state of its own to schedule it again; "
                "snapshot again once the work is done (docs/api.md)"
            )


def report_fault(host: DeviceHost, report: str) -> None:
    """Print the first fault's report and stop the VM; keep (a few) later ones for the API user."""
    first = not host.device_faults
    if len(host.device_faults) < MAX_FAULT_REPORTS:
        host.device_faults.append(report)
    if first:
        sys.stderr.write(f"broiler: {report}\n")
        host.request_exit(exitcodes.DEVICE_FAULT, report.split("\n", 1)[0])


def add_device(
    host: DeviceHost,
    device: Any,
    *,
    pio: int | None = None,
    mmio: int | None = None,
    size: int | None = None,
    name: str | None = None,
) -> int:
    """Put a user's device on the machine: at port ``pio``, at address ``mmio``, or (neither) on the PCI
    bus if it is a ``PciFunction``. Returns the port, address or PCI slot. ``size`` defaults to the
    device's ``size`` attribute, else 1 port or one 4 KiB page."""
    label = name or device_name(device)
    if isinstance(device, PciFunction):
        if pio is not None or mmio is not None or size is not None:
            raise ConfigError(f"device {label!r}: a PCI function takes no pio=, mmio= or size=")
        return _add_pci(host, device, label)
    if (pio is None) == (mmio is None):
        raise ConfigError(f"device {label!r}: give exactly one of pio= or mmio=")
    if not callable(getattr(device, "read", None)) or not callable(getattr(device, "write", None)):
        raise ConfigError(f"device {label!r}: needs read(offset, size) and write(offset, size, value) methods")
    base = pio if pio is not None else mmio
    assert base is not None
    if size is None:
        own = getattr(device, "size", None)
        size = own if isinstance(own, int) else (DEFAULT_PIO_SIZE if pio is not None else DEFAULT_MMIO_SIZE)
    _attach(host, device, label, pio is not None, base)
    kind = "port" if pio is not None else "address"
    guarded = GuardedDevice(device, label, lambda off: f"{kind} {base + off:#x}", lambda r: report_fault(host, r))
    add = host.add_pio if pio is not None else host.add_mmio
    try:
        add(base, size, guarded, owner=label, name=label)
    except ConfigError as exc:
        raise ConfigError(f"device {label!r}: {exc}") from None
    return base


def _attach(host: DeviceHost, device: Any, label: str, pio: bool, base: int | None) -> None:
    attach = getattr(device, "attach", None)
    if attach is None:
        return
    ctx = DeviceContext(host, device, label, pio, base)
    host.user_contexts.append(ctx)
    try:
        attach(ctx)
    except ConfigError as exc:
        raise ConfigError(f"device {label!r}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"device {label!r}: attach() raised {type(exc).__name__}: {exc}") from None


def _add_pci(host: DeviceHost, fn: PciFunction, label: str) -> int:
    if host.pci is None:
        raise ConfigError(f"device {label!r}: this machine has no PCI host")
    _attach(host, fn, label, False, None)

    def on_fault(report: str) -> None:
        report_fault(host, report)

    for bar in fn.bars.values():
        bar.device = GuardedDevice(bar.device, label, _bar_access(fn, bar.index), on_fault)
        for bell in bar.doorbells:
            bell.callback = guard_callback(
                bell.callback, label, f"a doorbell at BAR{bar.index} +{bell.offset:#x}", on_fault
            )
    try:
        return host.pci.add(fn)
    except ConfigError as exc:
        raise ConfigError(f"device {label!r}: {exc}") from None


def _bar_access(fn: PciFunction, index: int) -> Callable[[int], str]:
    def describe(offset: int) -> str:
        mapped = fn.bars[index].mapped
        where = f" (address {mapped + offset:#x})" if mapped is not None else ""
        return f"BAR{index} offset {offset:#x}{where}"

    return describe


def add_device_spec(host: DeviceHost, spec: DeviceSpec) -> int:
    """Load, construct and place one ``--device``; every failure is one ConfigError naming it."""
    cls = load_device_class(spec.ref)
    try:
        device = cls(**spec.kwargs)
    except Exception as exc:
        raise ConfigError(
            f"device {spec.ref}: {cls.__name__}({_args(spec.kwargs)}) raised {type(exc).__name__}: {exc}"
        ) from None
    if spec.placement == "pci":
        if not isinstance(device, PciFunction):
            raise ConfigError(f"device {spec.ref}: ',pci' needs a PciFunction subclass, not {cls.__name__}")
        return add_device(host, device)
    if spec.placement == "pio":
        return add_device(host, device, pio=spec.base, size=spec.size)
    return add_device(host, device, mmio=spec.base, size=spec.size)


def _args(kwargs: dict[str, int | str]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
