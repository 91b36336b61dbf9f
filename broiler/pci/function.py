"""A PCI function: type-0 configuration space, BARs that follow the guest, INTx, MSI, MSI-X, doorbells.

A device author subclasses (or instantiates) ``PciFunction``, adds BARs with a ``Device`` for each,
optionally an INTx line, an MSI or MSI-X capability and doorbells, then hands it to
``PciHost.add``. The host allocates BAR addresses, enables decode as firmware would, and from then
on the guest owns the BARs.

BAR decode rule (applied after every write to COMMAND or a BAR, and whenever the host retries):

1. A BAR decodes only while its space (IO or MEM) is enabled in COMMAND.
2. An address of 0, or the sizing pattern (all address bits set), is "not programmed": not decoded,
   not an error.
3. The whole BAR must lie inside the host's window for its kind: ports [0x1000, 0x10000) and memory
   [0xC2000000, 0xD0000000) by default. Anything else -- on guest RAM, elsewhere in the PCI hole
   (ECAM, IOAPIC, LAPIC are in-kernel or special), above 4 GiB, on legacy ports -- keeps the value
   the guest wrote (it reads back) but is not decoded, and counts one guest error on the function.
4. A BAR that would overlap another region on its bus (another BAR, or any other device) is not
   decoded either ("blocked") and counts one guest error. Blocked BARs are retried whenever any BAR
   of the host is unmapped, so they come alive once the conflict goes away.
5. Mapping is the host's job (``PciHost.update_decode``, pci/host.py): this module only says *where*
   each BAR should decode (``decode_target``). When a BAR is decoded its region is on the bus (owner =
   the function) and its doorbells are registered through ``Doorbells``; when it stops decoding or
   moves, the doorbells go first and the region moves or leaves, so the old address reads all ones. A
   64-bit BAR is written one dword at a time, so it may pass through (and be refused at) an
   intermediate address; Linux turns decode off meanwhile.

A device declares each BAR with ``add_bar(index, kind, size, handler, doorbells=[BarDoorbell(...)])``:
``handler`` is the one way to expose BAR registers (a ``Device`` whose ``read``/``write`` see
BAR-relative offsets), and each ``BarDoorbell(offset, length, datamatch, callback)`` is an ioeventfd
the host keeps at BAR base + offset. MSI-X adds its table and PBA as two more handlers at their
offsets inside their BAR (``Bar.overlays``).

INTx: ``set_intx(line)`` sets Interrupt Pin = INTA and Interrupt Line = the line's GSI. The device
calls ``raise_intx()``/``lower_intx()`` (level-triggered). Status bit 3 shows the device's request;
COMMAND bit 10 (Interrupt Disable) holds the line low while set, as in PCI 2.3.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from ..core.bus import Device, all_ones
from ..core.irq import IrqLine, MsiSink
from ..core.state import check_keys, load_fields, save_fields, take_bool, take_bytes
from ..errors import ConfigError
from .bar import Bar, BarDoorbell, BarKind, check_bar
from .config import (
    BAR0,
    BAR_COUNT,
    CLASS_PROG,
    CMD_INTX_DISABLE,
    CMD_IO,
    CMD_MEMORY,
    COMMAND,
    CONFIG_SPACE_SIZE,
    DEVICE_ID,
    INTERRUPT_LINE,
    INTERRUPT_PIN,
    REVISION_ID,
    STATUS,
    STATUS_INTERRUPT,
    SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
    ConfigSpace,
)
from .interfaces import DoorbellCallback
from .msi import MsiCapability, MsixCapability
from .state import load_msi, merge_config, save_msi


class DecodeHost(Protocol):
    """What a function tells the PCI host that maps it (pci/host.PciHost; a protocol so this module
    does not import the host that imports it)."""

    def update_decode(self, function: PciFunction) -> None: ...

    def doorbell_added(self, fn: PciFunction, bar: Bar, bell: BarDoorbell) -> None: ...

    def doorbell_removed(self, bell: BarDoorbell) -> None: ...


FUNCTION_CONFIG_SIZE = 0x1000  # what ECAM gives each function; only the first 256 bytes exist


class PciFunction(Device):
    """Function 0 of a PCI device. ``read``/``write`` are configuration-space accesses (0..0xFFF)."""

    name = "pci-function"
    state_fields = ()  # the function's own registers beyond config space (subclasses: save_function_state)

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        class_code: int = 0,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        name: str | None = None,
        command: int | None = None,
    ) -> None:
        super().__init__()
        if name is not None:
            self.name = name
        cfg = self.config = ConfigSpace()
        cfg.set(VENDOR_ID, 2, vendor_id)
        cfg.set(DEVICE_ID, 2, device_id)
        cfg.set(REVISION_ID, 1, revision)
        cfg.set(CLASS_PROG, 3, class_code)
        cfg.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        cfg.set(SUBSYSTEM_ID, 2, subsystem_id)
        self.initial_command = command
        self.bars: dict[int, Bar] = {}
        self.host: DecodeHost | None = None
        self.slot: int | None = None
        self.lock: threading.RLock = threading.RLock()  # replaced by the host's lock on add
        self.intx: IrqLine | None = None
        self._intx_request = False
        self._intx_level = False
        self.msi: MsiCapability | None = None
        self.msix: MsixCapability | None = None
        self._hooks: list[MsiCapability | MsixCapability] = []

    # -- building ---------------------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return self.config.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.config.get(DEVICE_ID, 2)

    def add_bar(
        self,
        index: int,
        kind: BarKind,
        size: int,
        handler: Device,
        *,
        prefetchable: bool = False,
        doorbells: Sequence[BarDoorbell] = (),
    ) -> Bar:
        """Declare BAR ``index``: ``handler`` answers its registers (BAR-relative offsets), and the
        host keeps each of ``doorbells`` registered at BAR base + its offset while the BAR decodes."""
        if self.host is not None:
            raise ConfigError(f"{self.name}: BARs must be added before the function joins a host")
        check_bar(kind, size)
        bar = Bar(index, kind, size, handler, prefetchable and kind is not BarKind.IO, name=f"{self.name} BAR{index}")
        for bell in doorbells:
            self._check_doorbell(bar, bell)
        bar.doorbells.extend(doorbells)
        if not 0 <= index <= BAR_COUNT - bar.slots:
            raise ConfigError(f"{self.name}: bad BAR index {index} for a {kind.value} BAR")
        taken = {b.index + i for b in self.bars.values() for i in range(b.slots)}
        if any(index + i in taken for i in range(bar.slots)):
            raise ConfigError(f"{self.name}: BAR{index} is already in use")
        reg = BAR0 + 4 * index
        self.config.set(reg, 4, bar.type_bits)
        self.config.set_masks(reg, 4, wmask=bar.address_mask & 0xFFFF_FFFF)
        if bar.slots == 2:
            self.config.set_masks(reg + 4, 4, wmask=bar.address_mask >> 32)
        self.bars[index] = bar
        return bar

    def set_intx(self, line: IrqLine, pin: int = 1) -> None:
        """Wire INTx pin ``pin`` (1 = INTA) to ``line``; Interrupt Line reads its GSI."""
        self.intx = line
        self.config.set(INTERRUPT_PIN, 1, pin)
        self.config.set(INTERRUPT_LINE, 1, line.gsi & 0xFF)

    def add_msi(
        self, sink: MsiSink, *, vectors: int = 1, is64: bool = False, per_vector_mask: bool = False
    ) -> MsiCapability:
        cap = MsiCapability(self.config, sink, vectors=vectors, is64=is64, per_vector_mask=per_vector_mask)
        self.msi = cap
        self._hooks.append(cap)
        return cap

    def add_msix(
        self, sink: MsiSink, *, bar: int, vectors: int, table_offset: int = 0, pba_offset: int | None = None
    ) -> MsixCapability:
        """MSI-X with its table at ``table_offset`` and PBA (default: right after the table) in ``bar``."""
        target = self.bars.get(bar)
        if target is None or target.kind is BarKind.IO:
            raise ConfigError(f"{self.name}: MSI-X needs a memory BAR{bar}")
        if pba_offset is None:
            pba_offset = (table_offset + vectors * 16 + 7) & ~7
        if max(table_offset + vectors * 16, pba_offset + (vectors + 63) // 64 * 8) > target.size:
            raise ConfigError(f"{self.name}: MSI-X table/PBA do not fit in BAR{bar}")
        cap = MsixCapability(
            self.config, sink, bar=bar, vectors=vectors, table_offset=table_offset, pba_offset=pba_offset
        )
        target.overlays.append((table_offset, cap.table_size, cap.table_device))
        target.overlays.append((pba_offset, cap.pba_size, cap.pba_device))
        self.msix = cap
        self._hooks.append(cap)
        return cap

    # -- configuration space (what the host's mechanisms call) ------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return all_ones(size)  # extended space of a conventional function: absent
        return self.config.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            self.guest_error(f"config write of {size} bytes at {offset:#x} (outside the 256-byte header)")
            return
        end = offset + size
        with self.lock:
            self.config.write(offset, size, value)
            if offset < COMMAND + 2 and end > COMMAND:
                self._drive_intx()
            for hook in self._hooks:
                if offset < hook.offset + hook.length and end > hook.offset:
                    hook.config_written()
            touches_bars = offset < BAR0 + 4 * BAR_COUNT and end > BAR0
            if self.host is not None and (touches_bars or offset < COMMAND + 2 and end > COMMAND):
                self.host.update_decode(self)

    @property
    def command(self) -> int:
        return self.config.get(COMMAND, 2)

    # -- snapshot ----------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        """Config space, INTx request, MSI/MSI-X state, each BAR handler's registers, the function's own."""
        with self.lock:
            bars = {str(index): bar.device.save_state() for index, bar in self.bars.items()}
            return {
                "config": bytes(self.config.data),
                "intx": self._intx_request,
                "msi": save_msi(self.msi, self.msix),
                "bars": bars,
                "function": self.save_function_state(),
            }

    def load_state(self, state: dict[str, Any]) -> None:
        """Registers back, then BARs re-decoded where the guest had put them (regions and doorbells move)."""
        saved = check_keys(state, ("config", "intx", "msi", "bars", "function"), self.name)
        config = take_bytes(saved, "config", self.name, CONFIG_SPACE_SIZE)
        intx = take_bool(saved, "intx", self.name)
        bars = check_keys(saved["bars"], [str(index) for index in self.bars], f"{self.name} BARs")
        with self.lock:
            load_msi(self.msi, self.msix, saved["msi"], self.name)
            for index, bar in self.bars.items():
                bar.device.load_state(bars[str(index)])
            self.load_function_state(saved["function"])
            merge_config(self.config, config)
            self._intx_level = False  # a fresh machine's line is low: raise it again if requested
            self._set_intx(intx)
            if self.host is not None:
                self.host.update_decode(self)

    def save_function_state(self) -> dict[str, Any]:
        """What the function holds besides config space and BAR handlers (``state_fields`` by default)."""
        return save_fields(self, self.state_fields or ())

    def load_function_state(self, state: dict[str, Any]) -> None:
        load_fields(self, self.state_fields or (), state, self.name)

    # -- INTx ------------------------------------------------------------------------------
    def raise_intx(self) -> None:
        self._set_intx(True)

    def lower_intx(self) -> None:
        self._set_intx(False)

    @property
    def intx_asserted(self) -> bool:
        """The device's request (Status bit 3), whatever Interrupt Disable says."""
        return self._intx_request

    def _set_intx(self, on: bool) -> None:
        with self.lock:
            self._intx_request = on
            self.config.update_bits(STATUS, 2, STATUS_INTERRUPT, on)
            self._drive_intx()

    def _drive_intx(self) -> None:
        level = self._intx_request and not self.command & CMD_INTX_DISABLE
        if self.intx is not None and level != self._intx_level:
            self._intx_level = level
            self.intx.set_level(level)

    # -- BARs ------------------------------------------------------------------------------
    def bar_value(self, index: int) -> int:
        """The BAR's programmed address (type bits stripped), decoded or not."""
        bar = self.bars[index]
        value = self.config.get(BAR0 + 4 * index, 4)
        if bar.slots == 2:
            value |= self.config.get(BAR0 + 4 * index + 4, 4) << 32
        return value & bar.address_mask

    def decode_target(self, bar: Bar, window: tuple[int, int]) -> tuple[int | None, str | None]:
        """Where ``bar`` should decode now, from COMMAND and the BAR value alone: (base or None, why
        it is refused or None). ``window`` is the host's [lo, hi) for the BAR's kind."""
        if not self.command & (CMD_IO if bar.kind is BarKind.IO else CMD_MEMORY):
            return None, None
        addr = self.bar_value(bar.index)
        if addr == 0 or addr == bar.address_mask:
            return None, None
        lo, hi = window
        if not (lo <= addr and addr + bar.size <= hi):
            return None, (
                f"BAR{bar.index} moved to {addr:#x}+{bar.size:#x}, outside the "
                f"{'IO' if bar.kind is BarKind.IO else 'MMIO'} window [{lo:#x}, {hi:#x}): not decoded"
            )
        return addr, None

    # -- doorbells declared or changed at run time (pci-testdev selects them by test) ------
    def _check_doorbell(self, bar: Bar, bell: BarDoorbell) -> None:
        if bell.offset < 0 or bell.offset + bell.length > bar.size or bell.length not in (1, 2, 4, 8):
            raise ConfigError(f"{self.name}: bad doorbell BAR{bar.index}+{bell.offset:#x} length {bell.length}")

    def add_doorbell(
        self, bar: int, offset: int, length: int, callback: DoorbellCallback, *, datamatch: int | None = None
    ) -> BarDoorbell:
        """A doorbell at ``offset`` of BAR ``bar``, registered while (and where) the BAR decodes."""
        target = self.bars.get(bar)
        bell = BarDoorbell(offset, length, datamatch, callback)
        if target is None:
            raise ConfigError(f"{self.name}: bad doorbell BAR{bar}+{offset:#x} length {length}")
        self._check_doorbell(target, bell)
        with self.lock:
            target.doorbells.append(bell)
            if self.host is not None:
                self.host.doorbell_added(self, target, bell)
        return bell

    def remove_doorbell(self, bell: BarDoorbell) -> None:
        with self.lock:
            for bar in self.bars.values():
                if bell in bar.doorbells:
                    bar.doorbells.remove(bell)
                    if self.host is not None:
                        self.host.doorbell_removed(bell)

    # -- reporting -------------------------------------------------------------------------
    def describe(self) -> str:
        cfg = self.config
        parts = [f"{self.vendor_id:04x}:{self.device_id:04x} class {cfg.get(CLASS_PROG, 3):06x} {self.name}"]
        for bar in self.bars.values():
            where = f"{bar.mapped:#x}" if bar.mapped is not None else f"{self.bar_value(bar.index):#x} (off)"
            parts.append(f"BAR{bar.index} {bar.kind.value} {where}+{bar.size:#x}")
        if cfg.get(INTERRUPT_PIN, 1):
            parts.append(f"INT{'ABCD'[(cfg.get(INTERRUPT_PIN, 1) - 1) & 3]} line {cfg.get(INTERRUPT_LINE, 1)}")
        if self.msi is not None:
            parts.append(f"MSI@{self.msi.offset:#x}x{self.msi.vectors}")
        if self.msix is not None:
            parts.append(f"MSI-X@{self.msix.offset:#x}x{self.msix.vectors} BAR{self.msix.bar}")
        return ", ".join(parts)
