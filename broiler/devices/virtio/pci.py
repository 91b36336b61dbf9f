"""A virtio device on PCI: the one module that knows ``PciFunction``'s API (so a PCI rework touches
only this file). It builds the function QEMU-style:

- BAR0: the legacy IO register file (legacy and transitional functions);
- BAR1: MSI-X table and PBA (one vector per queue plus one for configuration changes);
- BAR4: the modern register file (modern and transitional), announced by vendor capabilities;
- INTx pin A on the line it is given.

Doorbells are declared with their BAR, one per queue (legacy: BAR0+0x10 with datamatch = queue index;
modern: the queue's own notify address) and ring ``VirtioTransport.notify``; the PCI host registers
them as ioeventfds where the BAR currently decodes and moves them with it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from ...core.bus import Device
from ...core.irq import IrqLine, MsiSink
from ...core.state import check_keys
from ...pci import BarDoorbell, PciFunction
from ...pci.bar import BarKind
from . import legacy, modern
from .chain import Memory
from .device import VirtioDevice
from .spec import (
    DEVICE_BLOCK,
    DEVICE_CONSOLE,
    MODERN_DEVICE_ID_BASE,
    MODERN_REVISION,
    PCI_CAP_VENDOR,
    PCI_VENDOR_ID,
    TRANSITIONAL_DEVICE_IDS,
)
from .state import kick_active_queues, load_transport, save_transport
from .transport import VirtioTransport

LEGACY_BAR, MSIX_BAR, MODERN_BAR = 0, 1, 4
MSIX_BAR_SIZE = 0x1000
MODERN_SUBSYSTEM_ID = 0x1100  # what QEMU uses for modern-only functions (the spec asks for >= 0x40)
CLASS_CODES = {DEVICE_BLOCK: 0x018000, DEVICE_CONSOLE: 0x078000}  # others: 0x00FF00


class TransportKind(Enum):
    MODERN = "modern"
    LEGACY = "legacy"
    TRANSITIONAL = "transitional"


class VirtioPci(PciFunction):
    """One virtio device as a PCI function, with its transport state in ``self.transport``."""

    def __init__(
        self,
        device: VirtioDevice,
        *,
        memory: Memory,
        msi_sink: MsiSink,
        intx: IrqLine | None,
        kind: TransportKind = TransportKind.TRANSITIONAL,
    ) -> None:
        has_modern = kind is not TransportKind.LEGACY
        has_legacy = kind is not TransportKind.MODERN
        dtype = device.device_type
        super().__init__(
            vendor_id=PCI_VENDOR_ID,
            device_id=TRANSITIONAL_DEVICE_IDS[dtype] if has_legacy else MODERN_DEVICE_ID_BASE + dtype,
            class_code=CLASS_CODES.get(dtype, 0x00FF00),
            revision=0 if has_legacy else MODERN_REVISION,
            subsystem_vendor_id=PCI_VENDOR_ID,
            subsystem_id=dtype if has_legacy else MODERN_SUBSYSTEM_ID,
            name=device.name,
        )
        self.kind = kind
        self.device = device
        self._final_state: dict[str, object] | None = None
        self.transport = VirtioTransport(device, memory, self, modern=has_modern)
        queues = len(self.transport.queues)
        if has_legacy:
            self.add_bar(
                LEGACY_BAR,
                BarKind.IO,
                legacy.BAR_SIZE,
                legacy.LegacyRegisters(self.transport),
                doorbells=[BarDoorbell(legacy.QUEUE_NOTIFY, 2, q, self._ring(q)) for q in range(queues)],
            )
        self.add_bar(MSIX_BAR, BarKind.MEM32, MSIX_BAR_SIZE, Device())
        self.add_msix(msi_sink, bar=MSIX_BAR, vectors=queues + 1)
        if has_modern:
            self.add_bar(
                MODERN_BAR,
                BarKind.MEM32,
                modern.BAR_SIZE,
                modern.ModernRegisters(self.transport),
                doorbells=[BarDoorbell(modern.notify_offset(q), 2, None, self._ring(q)) for q in range(queues)],
            )
            for cap in modern.capabilities(queues):
                self._add_virtio_cap(cap)
        if intx is not None:
            self.set_intx(intx)

    def _ring(self, queue_index: int) -> Callable[[int], None]:
        """The doorbell callback for one queue (kicks that arrived together count as one notify)."""

        def ring(kicks: int) -> None:
            self.transport.notify(queue_index)

        return ring

    def _add_virtio_cap(self, cap: modern.VirtioCap) -> None:
        length = 16 if cap.notify_multiplier is None else 20
        at = self.config.add_capability(PCI_CAP_VENDOR, length)
        cfg = self.config
        cfg.set(at + 2, 1, length)
        cfg.set(at + 3, 1, cap.cfg_type)
        cfg.set(at + 4, 1, MODERN_BAR)
        cfg.set(at + 8, 4, cap.offset)
        cfg.set(at + 12, 4, cap.length)
        if cap.notify_multiplier is not None:
            cfg.set(at + 16, 4, cap.notify_multiplier)

    # -- snapshot: the device first (a block device drains its IO), then transport and queues ----------
    def save_function_state(self) -> dict[str, Any]:
        device = self.device.save_state()
        return {"transport": save_transport(self.transport), "device": device}

    def load_function_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("transport", "device"), self.name)
        load_transport(self.transport, saved["transport"], self.name)
        self.device.load_state(saved["device"])

    def restart(self) -> None:
        """After a restore, once everything is back: serve what the driver made available before the snapshot."""
        kick_active_queues(self.transport)

    def __repr__(self) -> str:  # doorbell owners and stats print this
        return self.name

    # -- InterruptPins (what the transport calls, from any thread) ------------------------------
    def msix_enabled(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def msix_vectors(self) -> int:
        return self.msix.vectors if self.msix is not None else 0

    def msix_notify(self, vector: int) -> None:
        if self.msix is not None:
            self.msix.notify(vector)

    def set_intx_level(self, level: bool) -> None:
        if level:
            self.raise_intx()
        else:
            self.lower_intx()

    def describe_state(self) -> dict[str, object]:
        """Transport kind, device status and each queue's ring state (for stats and `broiler stat`);
        after ``close`` the state the guest left, not the reset one."""
        if self._final_state is not None:
            return self._final_state
        t = self.transport
        queues = [
            {"size": q.size, "enabled": q.enabled, "active": q.active, "avail": q.last_avail, "used": q.used_idx}
            for q in t.queues
        ]
        return {"transport": self.kind.value, "status": t.status, "driver_ok": t.driver_ok, "queues": queues}

    def describe_layout(self) -> list[str]:
        """What `broiler layout` adds under the PCI bus: queues and where their doorbells are."""
        n = len(self.transport.queues)
        where = []
        if self.kind is not TransportKind.MODERN:
            where.append(f"BAR{LEGACY_BAR}+{legacy.QUEUE_NOTIFY:#x} (legacy, datamatch = queue)")
        if self.kind is not TransportKind.LEGACY:
            offsets = ", ".join(f"{modern.notify_offset(q):#x}" for q in range(n))
            where.append(f"BAR{MODERN_BAR}+{offsets} (modern, one per queue)")
        sizes = "/".join(str(q.max_size) for q in self.transport.queues)
        return [
            f"{self.name}: {self.kind.value}, {n} queue{'s' * (n != 1)} (max size {sizes}), "
            f"MSI-X {n + 1} vectors in BAR{MSIX_BAR}",
            f"  doorbells: {'; '.join(where)}",
        ]

    def stats(self) -> dict[str, int]:
        t = self.transport
        return {
            **self.device.stats.as_dict(),
            **self.device.extra_stats(),
            "ignored_kicks": t.ignored_kicks,
            "resets": t.resets,
        }

    def close(self) -> None:
        self._final_state = self.describe_state()  # --stats and --stats-json are written after this
        self.transport.reset()
        self.device.close()
