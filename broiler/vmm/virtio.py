"""The machine's virtio devices: the ``--disk`` option, and placing virtio functions on the PCI bus.

``--disk FILE[,ro=on|off][,serial=ID]`` (``-r/--rootfs FILE`` is Broiler's spelling) adds one
virtio-blk function per use, in command-line order, after the other PCI devices; ``--rng`` adds a
virtio-rng function, and ``--console virtio`` (or ``--virtio-console-log FILE``) a virtio-console
function, always in that order (disks, rng, console) so slots depend only on what was asked for.
``--virtio-transport`` picks modern, legacy or transitional (the default, which both old and new guest
drivers bind to). Disks are opened and locked here, before the guest runs,
so a missing or busy file is one line and exit status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..core.irq import MsiMessage, MsiSink
from ..devices.virtio.block import DiskImage, VirtioBlock
from ..devices.virtio.block.request import ID_BYTES
from ..devices.virtio.console import VirtioConsole
from ..devices.virtio.pci import TransportKind, VirtioPci
from ..devices.virtio.rng import VirtioRng
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..core.irq import IrqLine
    from ..core.memory import GuestMemory
    from ..pci import PciHost

MAX_DISKS = 16


@dataclass(frozen=True, slots=True)
class DiskSpec:
    path: str
    read_only: bool = False
    serial: str | None = None


def parse_disk(text: str) -> DiskSpec:
    """'FILE[,ro=on][,serial=ID]' -> DiskSpec; a bad option is a ConfigError naming it."""
    path, *options = text.split(",")
    if not path:
        raise ConfigError(f"--disk {text!r}: no file name")
    read_only, serial = False, None
    for option in options:
        key, sep, value = option.partition("=")
        if key == "ro" and sep and value in ("on", "off", "true", "false", "1", "0"):
            read_only = value in ("on", "true", "1")
        elif key == "serial" and sep:
            if len(value.encode()) > ID_BYTES or not value.isprintable():
                raise ConfigError(f"--disk {text!r}: serial must be at most {ID_BYTES} printable bytes")
            serial = value
        else:
            raise ConfigError(f"--disk {text!r}: unknown option {option!r} (use ro=on|off, serial=ID)")
    return DiskSpec(path, read_only, serial)


def parse_transport(text: str) -> TransportKind:
    try:
        return TransportKind(text)
    except ValueError:
        raise ConfigError(f"--virtio-transport {text!r}: use modern, legacy or transitional") from None


class VirtioInterrupts(Protocol):
    """What of Machine.irqs (or the layout sketch's stand-in) the virtio wiring uses."""

    def alloc_line(self, owner: str, kind: str = "isa") -> IrqLine: ...

    def send_msi(self, message: MsiMessage) -> None: ...

    def msi_irqfd_sink(self, slots: int) -> MsiSink: ...


class VirtioHost(Protocol):
    """What of a Machine (or the layout sketch) the virtio wiring uses."""

    memory: GuestMemory
    pci: PciHost | None
    on_stop: list[Callable[[], None]]

    @property
    def irqs(self) -> VirtioInterrupts: ...


def add_virtio_devices(
    m: VirtioHost,
    disks: list[DiskSpec],
    *,
    rng: bool = False,
    console: Callable[[bytes], None] | None = None,
    transport: TransportKind = TransportKind.TRANSITIONAL,
    open_disk: Callable[[DiskSpec], DiskImage] | None = None,
) -> list[VirtioPci]:
    """Open every disk (all or none: a failure closes the ones already open), then add the functions.
    ``console`` is where a virtio-console's output goes (None: no console); ``open_disk`` opens a disk
    some other way than its file (replay: vmm/record_virtio.py)."""
    if len(disks) > MAX_DISKS:
        raise ConfigError(f"at most {MAX_DISKS} disks")
    if m.pci is None:
        raise ConfigError("virtio devices need the PCI host")
    images: list[DiskImage] = []
    try:
        for spec in disks:
            images.append(DiskImage(spec.path, read_only=spec.read_only) if open_disk is None else open_disk(spec))
    except ConfigError:
        for image in images:
            image.close()
        raise
    devices: list[VirtioBlock | VirtioRng | VirtioConsole] = [
        VirtioBlock(image, serial=spec.serial, name=f"virtio-blk{i}")
        for i, (spec, image) in enumerate(zip(disks, images, strict=True))
    ]
    if rng:
        devices.append(VirtioRng())
    if console is not None:
        devices.append(VirtioConsole(console))
    functions = []
    for device in devices:
        fn = VirtioPci(
            device,
            memory=m.memory,
            msi_sink=m.irqs.msi_irqfd_sink(slots=len(device.queue_max_sizes) + 1),
            intx=m.irqs.alloc_line(device.name, "ioapic"),
            kind=transport,
        )
        m.pci.add(fn)
        m.on_stop.append(fn.close)
        functions.append(fn)
    return functions


def virtio_functions(pci: PciHost | None) -> list[VirtioPci]:
    return [] if pci is None else [fn for fn in pci.functions.values() if isinstance(fn, VirtioPci)]


def virtio_console(pci: PciHost | None) -> VirtioConsole | None:
    """The machine's virtio-console device (where `--console virtio` sends stdin), if it has one."""
    return next((fn.device for fn in virtio_functions(pci) if isinstance(fn.device, VirtioConsole)), None)


def virtio_stats(pci: PciHost | None) -> dict[str, dict[str, Any]]:
    """Per virtio device: its slot, transport, status, queues, then kicks, requests, bytes read/written,
    errors, ignored kicks, resets and device-specific counters."""
    if pci is None:
        return {}
    return {
        fn.name: {"slot": slot, **fn.describe_state(), **fn.stats()}
        for slot, fn in pci.functions.items()
        if isinstance(fn, VirtioPci)
    }
