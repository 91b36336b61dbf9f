"""BAR descriptions and the two bump allocators that place them (the seed's windows, spec §5.7).

- IO BARs: 4..256 bytes (PCI's limit), handed out from port 0x6200 in 0x100-byte blocks, each block
  aligned to max(0x100, size) so the BAR is naturally aligned.
- Memory BARs (32- or 64-bit): at least 16 bytes, placed naturally aligned (address % size == 0) from
  0xC2000000 up to 0xD0000000. 64-bit BARs are placed in the same 32-bit window (the high dword is 0).

Sizes are powers of two. The allocators never free: addresses depend only on the order in which
functions are added, which the host's registry makes explicit.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.bus import Device, Region
from ..core.memory import PCI_MMIO_END, PCI_MMIO_START
from ..core.state import STATELESS
from ..errors import ConfigError

PCI_IO_START = 0x6200
PCI_IO_END = 0x10000
PCI_IO_BLOCK = 0x100

MAX_IO_BAR = 0x100
MIN_IO_BAR = 4
MIN_MEM_BAR = 16


class BarKind(enum.Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"

    @property
    def is_io(self) -> bool:
        return self is BarKind.IO


@dataclass(eq=False)
class BarDoorbell:
    """A doorbell a device wants inside a BAR: KVM catches ``length``-byte writes at BAR base +
    ``offset`` (only of value ``datamatch``, if given) and ``callback(kicks)`` runs on the event loop.
    ``handle`` and ``address`` are the host's record of where it is registered now."""

    offset: int
    length: int
    datamatch: int | None
    callback: Callable[[int], None]
    handle: object | None = None
    address: int | None = None


@dataclass(eq=False)
class Bar:
    """One BAR: its register handler (``device``, seeing offsets from the BAR base), its doorbells,
    and where the host has mapped it.

    ``overlays`` are (offset, length, handler) windows that take precedence over ``device`` inside
    the BAR (the MSI-X table and PBA live there).
    """

    index: int
    kind: BarKind
    size: int
    device: Device
    prefetchable: bool = False
    name: str = ""
    overlays: list[tuple[int, int, Device]] = field(default_factory=list)
    doorbells: list[BarDoorbell] = field(default_factory=list)
    # Live state, owned by the PciHost under its lock.
    region: Region | None = None
    mapped: int | None = None  # the base currently decoded, or None
    rejected: int | None = None  # last address refused (to count each refusal once)

    @property
    def slots(self) -> int:
        """How many BAR registers it uses (2 for a 64-bit memory BAR)."""
        return 2 if self.kind is BarKind.MEM64 else 1

    @property
    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return 0x1
        bits = 0x4 if self.kind is BarKind.MEM64 else 0x0
        return bits | (0x8 if self.prefetchable else 0)

    @property
    def address_mask(self) -> int:
        """Writable bits of the (64-bit for MEM64) BAR value."""
        low = 0x3 if self.kind is BarKind.IO else 0xF
        width = 64 if self.kind is BarKind.MEM64 else 32
        return ~(self.size - 1) & ~low & ((1 << width) - 1)


class BarWindow(Device):
    """What the host puts on the bus for a BAR with overlays: each access goes to the overlay that
    contains it (at an offset relative to the overlay), else to the BAR's own handler."""

    state_fields = STATELESS  # the handler and the MSI-X table/PBA are saved with the function

    def __init__(self, bar: Bar) -> None:
        super().__init__()
        self.bar = bar
        self.name = bar.device.name

    def _route(self, offset: int) -> tuple[Device, int]:
        for start, length, device in self.bar.overlays:
            if start <= offset < start + length:
                return device, offset - start
        return self.bar.device, offset

    def read(self, offset: int, size: int) -> int:
        device, off = self._route(offset)
        return device.read(off, size)

    def write(self, offset: int, size: int, value: int) -> None:
        device, off = self._route(offset)
        device.write(off, size, value)


def check_bar(kind: BarKind, size: int) -> None:
    if size <= 0 or size & (size - 1):
        raise ConfigError(f"BAR size {size:#x} is not a power of two")
    if kind is BarKind.IO and not MIN_IO_BAR <= size <= MAX_IO_BAR:
        raise ConfigError(f"IO BAR size {size:#x} must be between 4 and 256 bytes")
    if kind is not BarKind.IO and size < MIN_MEM_BAR:
        raise ConfigError(f"memory BAR size {size:#x} is below 16 bytes")
    if kind is BarKind.MEM32 and size > 1 << 31:
        raise ConfigError(f"32-bit memory BAR size {size:#x} is above 2 GiB")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


class IoAllocator:
    """IO port blocks from ``start`` (0x6200) in 0x100-byte steps."""

    def __init__(self, start: int = PCI_IO_START, end: int = PCI_IO_END, block: int = PCI_IO_BLOCK) -> None:
        self.next = start
        self.end = end
        self.block = block

    def alloc(self, size: int) -> int:
        port = _align(self.next, max(self.block, size))
        if port + size > self.end:
            raise ConfigError(f"PCI IO window exhausted: no room for {size:#x} ports at {port:#x}")
        self.next = port + size
        return port


class MmioAllocator:
    """Naturally aligned MMIO blocks from ``start`` (0xC2000000) below ``end`` (0xD0000000)."""

    def __init__(self, start: int = PCI_MMIO_START, end: int = PCI_MMIO_END) -> None:
        self.next = start
        self.end = end

    def alloc(self, size: int) -> int:
        addr = _align(self.next, size)
        if addr + size > self.end:
            raise ConfigError(f"PCI MMIO window exhausted: no room for {size:#x} bytes at {addr:#x}")
        self.next = addr + size
        return addr
