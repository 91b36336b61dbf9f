"""The PCI host: bus 0, a slot registry, configuration mechanism #1 and ECAM, a host bridge at 00:00.0,
and the one place that maps BARs and their doorbells.

A BAR move, in five hops (the guest writes a BAR or COMMAND through CF8/CFC or ECAM):

1. ``ConfigMechanism1.write`` / ``Ecam.write`` (pci/host.py) -> ``PciHost.config_write``: find the function.
2. ``PciFunction.write`` (pci/function.py): merge the value into config space through the masks; a
   write that touches a BAR or COMMAND calls ``PciHost.update_decode(function)``.
3. ``PciHost.update_decode`` (pci/host.py): for each BAR, ``PciFunction.decode_target`` says where it
   should decode now (COMMAND bits, BAR value, window), and ``PciHost._place`` makes it so.
4. ``PciHost._place`` -> ``Bus.move`` / ``Bus.register`` / ``Bus.unregister`` (core/bus.py): the BAR's
   one region (its handler, or a ``BarWindow`` over handler + MSI-X table/PBA) follows the guest.
5. ``PciHost._doorbells_off`` / ``_doorbells_on`` -> ``Doorbells.remove`` / ``Doorbells.add``
   (core/ioeventfd.py): every ``BarDoorbell`` the device declared moves with its BAR.

Configuration mechanism #1 (ports 0xCF8-0xCFF, one region on the PioBus)
    0xCF8 is a 32-bit address latch: only a dword access at 0xCF8 reads or writes it (stored
    verbatim, so Linux's "write 0x80000000, read it back" probe works). Byte and word accesses to
    0xCF8-0xCFB, and dword accesses at 0xCF9-0xCFB, are ignored: reads give all ones, writes are
    dropped, and each counts a guest error (Linux's type-2 probe does one ``outb`` there).
    0xCFC-0xCFF is the data window. With latch bit 31 clear it reads all ones and drops writes.
    Otherwise bus = bits 23:16, device = bits 15:11, function = bits 10:8, register = QEMU's
    (latch & 0xFF) | (port & 3) for an access aligned in the window; an unaligned one (a word at 0xCFD)
    goes byte by byte, each at (latch & 0xFF) | (its port & 3). Bytes past 0xFF read 0 / are dropped.
    Latch bits 30:24 are ignored; with bits 1:0 clear this is plain mechanism #1 (docs/pci.md §2).

ECAM (the 16 MiB window at 0xC1000000 on the MmioBus; Broiler had a CF8-style window there)
    offset = bus << 20 | device << 15 | function << 12 | register; buses 0-15. Accesses must be 1, 2
    or 4 bytes and naturally aligned; anything else reads all ones, drops, and counts a guest error.
    Registers 0x100-0xFFF of our (conventional) functions read all ones.

Absent functions -- another bus, function 1-7, an empty slot -- read all ones and ignore writes
(normal enumeration, not counted). Multi-function devices are not modelled.

Slots are explicit: ``add(function, slot=None)`` takes the lowest free slot (0 is the host bridge),
or the one asked for; a taken or out-of-range slot raises ConfigError. BAR addresses come from the
allocators in add order and BAR-index order, then decode is enabled as firmware would do.

All configuration accesses and every BAR (re)mapping run under ``host.lock`` (a re-entrant lock
shared by all functions), so vCPU threads see one consistent latch and map.
"""

from __future__ import annotations

import logging
import threading

from ..core.bus import Bus, Device, all_ones
from ..core.memory import PCI_ECAM_BASE, PCI_ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START
from ..errors import BroilerError, ConfigError, OverlapError
from .bar import Bar, BarDoorbell, BarKind, BarWindow, IoAllocator, MmioAllocator
from .config import BAR0, CMD_IO, CMD_MEMORY, COMMAND, CONFIG_SPACE_SIZE
from .function import PciFunction
from .interfaces import Doorbells

log = logging.getLogger("broiler.pci")

CONF1_PORT = 0xCF8
CONF1_SIZE = 8
CONF1_ENABLE = 0x8000_0000
MAX_SLOTS = 32

PCI_IO_WINDOW = (0x1000, 0x10000)
PCI_MMIO_WINDOW = (PCI_MMIO_START, PCI_MMIO_END)

HOST_BRIDGE_VENDOR = 0x1B36  # Red Hat / QEMU's generic "PCIe host bridge" ID: no guest quirks
HOST_BRIDGE_DEVICE = 0x0008
HOST_BRIDGE_CLASS = 0x060000


class HostBridge(PciFunction):
    """00:00.0: a host bridge with no BARs and no interrupt."""

    name = "host-bridge"

    def __init__(self) -> None:
        super().__init__(
            vendor_id=HOST_BRIDGE_VENDOR, device_id=HOST_BRIDGE_DEVICE, class_code=HOST_BRIDGE_CLASS, command=0
        )


class ConfigMechanism1(Device):
    """Ports 0xCF8-0xCFF: the address latch and the data window."""

    name = "pci-conf1"
    state_fields = ("latch:32",)

    def __init__(self, host: PciHost) -> None:
        super().__init__()
        self.host = host
        self.latch = 0

    def _target(self) -> tuple[int, int, int, int] | None:
        """(bus, device, function, latch register bits 7:0), or None while the enable bit is clear."""
        latch = self.latch
        if not latch & CONF1_ENABLE:
            return None
        return (latch >> 16) & 0xFF, (latch >> 11) & 0x1F, (latch >> 8) & 0x7, latch & 0xFF

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            if offset == 0 and size == 4:
                return self.latch
            self.guest_error(f"{size}-byte read of the CF8 latch at +{offset}")
            return all_ones(size)
        with self.host.lock:
            target = self._target()
            if target is None or offset + size > CONF1_SIZE:
                return all_ones(size)
            bus, dev, fn, low = target
            port = offset - 4
            if port % size == 0:
                return self._read_piece(bus, dev, fn, low | port, size)
            value = 0  # unaligned in the window: one byte per port, as QEMU splits it
            for i in range(size):
                value |= self._read_piece(bus, dev, fn, low | (port + i), 1) << (8 * i)
            return value

    def _read_piece(self, bus: int, dev: int, fn: int, register: int, size: int) -> int:
        fits = min(size, CONFIG_SPACE_SIZE - register)  # QEMU truncates at the header's end: the rest reads 0
        if fits == 3:
            low = self.host.config_read(bus, dev, fn, register, 2)
            return low | self.host.config_read(bus, dev, fn, register + 2, 1) << 16
        return self.host.config_read(bus, dev, fn, register, fits)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if offset == 0 and size == 4:
                self.latch = value & 0xFFFF_FFFF
            else:
                self.guest_error(f"{size}-byte write to the CF8 latch at +{offset}")
            return
        with self.host.lock:
            target = self._target()
            if target is None or offset + size > CONF1_SIZE:
                return
            bus, dev, fn, low = target
            port = offset - 4
            if port % size:  # unaligned in the window: one byte per port, as QEMU splits it
                for i in range(size):
                    self._write_piece(bus, dev, fn, low | (port + i), 1, value >> (8 * i))
            else:
                self._write_piece(bus, dev, fn, low | port, size, value)

    def _write_piece(self, bus: int, dev: int, fn: int, register: int, size: int, value: int) -> None:
        fits = min(size, CONFIG_SPACE_SIZE - register)
        if fits == 3:
            self.host.config_write(bus, dev, fn, register, 2, value & 0xFFFF)
            self.host.config_write(bus, dev, fn, register + 2, 1, (value >> 16) & 0xFF)
        else:
            self.host.config_write(bus, dev, fn, register, fits, value & all_ones(fits))


class Ecam(Device):
    """The memory-mapped configuration window."""

    name = "pci-ecam"

    def __init__(self, host: PciHost) -> None:
        super().__init__()
        self.host = host

    @staticmethod
    def _decode(offset: int) -> tuple[int, int, int, int]:
        return offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 0x7, offset & 0xFFF

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset % size:
            self.guest_error(f"ECAM read of {size} bytes at {offset:#x}")
            return all_ones(size)
        return self.host.config_read(*self._decode(offset), size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset % size:
            self.guest_error(f"ECAM write of {size} bytes at {offset:#x}")
            return
        self.host.config_write(*self._decode(offset), size, value)


class PciHost:
    """Bus 0 of one machine: owns the config mechanisms, the slot registry and the BAR allocators."""

    def __init__(
        self,
        pio: Bus,
        mmio: Bus,
        *,
        doorbells: Doorbells | None = None,
        io_window: tuple[int, int] = PCI_IO_WINDOW,
        mmio_window: tuple[int, int] = PCI_MMIO_WINDOW,
        io_allocator: IoAllocator | None = None,
        mmio_allocator: MmioAllocator | None = None,
        ecam_base: int = PCI_ECAM_BASE,
        ecam_size: int = PCI_ECAM_SIZE,
    ) -> None:
        self.pio = pio
        self.mmio = mmio
        self.doorbells = doorbells
        self.io_window = io_window
        self.mmio_window = mmio_window
        self.io_allocator = io_allocator or IoAllocator()
        self.mmio_allocator = mmio_allocator or MmioAllocator()
        self.lock = threading.RLock()
        self._slots: dict[int, PciFunction] = {}
        self.conf1 = ConfigMechanism1(self)
        self.ecam = Ecam(self)
        pio.register(CONF1_PORT, CONF1_SIZE, self.conf1, owner=self, name="pci-conf1")
        mmio.register(ecam_base, ecam_size, self.ecam, owner=self, name="pci-ecam")
        self.bridge = HostBridge()
        self.add(self.bridge, slot=0)

    # -- registry --------------------------------------------------------------------------
    def add(self, function: PciFunction, slot: int | None = None) -> int:
        """Plug ``function`` in as device ``slot`` (default: the lowest free) of bus 0; returns the slot.

        Allocates its BARs, enables decode (the function's ``initial_command``, or IO/MEM for the
        BAR kinds it has) and maps them. Raises ConfigError for a bad or taken slot, a full bus, an
        exhausted window, or a BAR that collides with an existing region.
        """
        with self.lock:
            if function.host is not None or function in self._slots.values():
                raise ConfigError(f"{function.name} is already on a PCI bus")
            if slot is None:
                free = [s for s in range(MAX_SLOTS) if s not in self._slots]
                if not free:
                    raise ConfigError(f"PCI bus 0 is full: no slot for {function.name}")
                slot = free[0]
            elif not 0 <= slot < MAX_SLOTS:
                raise ConfigError(f"PCI slot {slot} for {function.name} is not in 0..31")
            elif slot in self._slots:
                raise ConfigError(f"PCI slot {slot} is taken by {self._slots[slot].name}; cannot add {function.name}")
            command = 0
            for bar in sorted(function.bars.values(), key=lambda b: b.index):
                if bar.kind is BarKind.IO:
                    addr = self.io_allocator.alloc(bar.size)
                    command |= CMD_IO
                else:
                    addr = self.mmio_allocator.alloc(bar.size)
                    command |= CMD_MEMORY
                reg = BAR0 + 4 * bar.index
                function.config.set(reg, 4, (addr & 0xFFFF_FFFF) | bar.type_bits)
                if bar.slots == 2:
                    function.config.set(reg + 4, 4, addr >> 32)
            if function.initial_command is not None:
                command = function.initial_command
            function.config.set(COMMAND, 2, command)
            function.lock = self.lock
            function.host = self
            function.slot = slot
            self._slots[slot] = function
            self._apply(function, count_errors=True)
            stuck = [b for b in function.bars.values() if b.rejected is not None]
            if stuck:
                self.remove(function)
                raise ConfigError(
                    f"{function.name}: BAR{stuck[0].index} at {stuck[0].rejected:#x} "
                    f"collides with an existing device or leaves its window"
                )
            return slot

    def remove(self, function: PciFunction) -> None:
        """Unplug ``function``: its BARs and doorbells go away, its slot reads all ones."""
        with self.lock:
            if function.host is not self:
                return
            for bar in function.bars.values():
                if bar.mapped is not None:
                    self._unmap(bar)
            del self._slots[function.slot if function.slot is not None else -1]
            function.host = None
            function.slot = None
            self.retry_blocked()

    @property
    def functions(self) -> dict[int, PciFunction]:
        """slot -> function, in slot order."""
        return dict(sorted(self._slots.items()))

    def function_at(self, bus: int, device: int, function: int) -> PciFunction | None:
        if bus != 0 or function != 0:
            return None
        return self._slots.get(device)

    # -- configuration cycles --------------------------------------------------------------
    def config_read(self, bus: int, device: int, function: int, register: int, size: int) -> int:
        with self.lock:
            fn = self.function_at(bus, device, function)
            return all_ones(size) if fn is None else fn.read(register, size)

    def config_write(self, bus: int, device: int, function: int, register: int, size: int, value: int) -> None:
        with self.lock:
            fn = self.function_at(bus, device, function)
            if fn is not None:
                fn.write(register, size, value)

    # -- BAR decode: where each BAR is, and its region and doorbells with it --------------------
    def update_decode(self, function: PciFunction) -> None:
        """Re-map ``function``'s BARs after a COMMAND or BAR write; retry blocked BARs if space freed."""
        with self.lock:
            if self._apply(function, count_errors=True):
                self.retry_blocked()

    def retry_blocked(self) -> None:
        """Try again to decode BARs that were refused because of an overlap."""
        with self.lock:
            for fn in list(self._slots.values()):
                self._apply(fn, count_errors=False)

    def _apply(self, fn: PciFunction, *, count_errors: bool) -> bool:
        """Bring every BAR of ``fn`` in line with its config space; True if any address was freed."""
        freed = False
        for bar in fn.bars.values():
            window = self.io_window if bar.kind is BarKind.IO else self.mmio_window
            want, reason = fn.decode_target(bar, window)
            if want is not None and want == bar.mapped:
                continue
            freed |= bar.mapped is not None
            if want is None:
                if bar.mapped is not None:
                    self._unmap(bar)
                if reason is None:  # decode off or not programmed: not an error
                    continue
                refusal, refused_at = reason, fn.bar_value(bar.index)
            else:
                placed = self._place(fn, bar, want)
                if placed is None:
                    bar.rejected = None
                    continue
                refusal, refused_at = placed, want
            if bar.rejected != refused_at:  # each refusal of an address counts once
                bar.rejected = refused_at
                if count_errors:
                    fn.guest_error(refusal)
        return freed

    def _place(self, fn: PciFunction, bar: Bar, base: int) -> str | None:
        """Decode ``bar`` at ``base`` (moving it if it decodes elsewhere); why not, if refused."""
        self._doorbells_off(bar)
        bus = self.pio if bar.kind is BarKind.IO else self.mmio
        try:
            if bar.region is not None:
                bar.region = bus.move(bar.region, base)
            else:
                handler = BarWindow(bar) if bar.overlays else bar.device
                bar.region = bus.register(base, bar.size, handler, owner=fn, name=bar.name)
        except OverlapError as err:
            self._unmap(bar)
            return f"BAR{bar.index} not decoded: {err}"
        bar.mapped = base
        self._doorbells_on(fn, bar)
        return None

    def _unmap(self, bar: Bar) -> None:
        self._doorbells_off(bar)
        if bar.region is not None:
            bar.region.bus.unregister(bar.region)
        bar.region = None
        bar.mapped = None

    def _doorbells_on(self, fn: PciFunction, bar: Bar) -> None:
        for bell in bar.doorbells:
            self._doorbell_on(fn, bar, bell)

    def _doorbells_off(self, bar: Bar) -> None:
        for bell in bar.doorbells:
            self.doorbell_removed(bell)

    def _doorbell_on(self, fn: PciFunction, bar: Bar, bell: BarDoorbell) -> None:
        if self.doorbells is None or bar.mapped is None or bell.handle is not None:
            return
        addr = bar.mapped + bell.offset
        try:
            bell.handle = self.doorbells.add(
                pio=bar.kind is BarKind.IO,
                addr=addr,
                length=bell.length,
                datamatch=bell.datamatch,
                callback=bell.callback,
                owner=fn,
            )
        except BroilerError as err:
            log.warning("%s: doorbell at %#x not registered (%s); writes reach the device instead", fn.name, addr, err)
            return
        bell.address = addr

    def doorbell_added(self, fn: PciFunction, bar: Bar, bell: BarDoorbell) -> None:
        """A device declared ``bell`` at run time: register it now if its BAR decodes."""
        with self.lock:
            self._doorbell_on(fn, bar, bell)

    def doorbell_removed(self, bell: BarDoorbell) -> None:
        """Stop catching ``bell`` (its BAR moved or stopped decoding, or the device dropped it)."""
        if bell.handle is not None and self.doorbells is not None:
            self.doorbells.remove(bell.handle)
        bell.handle = None
        bell.address = None

    def describe(self) -> list[str]:
        """One line per function, for ``broiler layout``."""
        return [f"00:{slot:02x}.0 {fn.describe()}" for slot, fn in self.functions.items()]
