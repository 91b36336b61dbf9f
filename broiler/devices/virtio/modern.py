"""The modern virtio-pci register file (virtio 1.2 §4.1.4): one memory BAR holding the common
configuration, the ISR, the device configuration and the notification area, each announced by a
vendor-specific PCI capability (``capabilities()``; the PCI glue writes them into config space).

Layout of the BAR (QEMU uses the same 4 KiB pages)::

    0x0000  common configuration (0x38 bytes used)
    0x1000  ISR status (1 byte; reading clears it)
    0x2000  device configuration
    0x3000  notifications: queue i at 0x3000 + i * NOTIFY_MULTIPLIER (a doorbell each)

Accesses must use the field's own width (64-bit addresses may also be written as two dwords);
anything else reads 0, is dropped, and counts a guest error.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.bus import Device
from .spec import MSI_NO_VECTOR, PCI_CAP_COMMON_CFG, PCI_CAP_DEVICE_CFG, PCI_CAP_ISR_CFG, PCI_CAP_NOTIFY_CFG
from .transport import VirtioTransport

COMMON_OFFSET, COMMON_LENGTH = 0x0000, 0x38
ISR_OFFSET, ISR_LENGTH = 0x1000, 0x4
DEVICE_OFFSET, DEVICE_LENGTH = 0x2000, 0x1000
NOTIFY_OFFSET = 0x3000
NOTIFY_MULTIPLIER = 4
BAR_SIZE = 0x4000

# Common configuration fields (§4.1.4.3): offset -> (name, width).
COMMON_FIELDS = {
    0x00: ("device_feature_select", 4),
    0x04: ("device_feature", 4),
    0x08: ("driver_feature_select", 4),
    0x0C: ("driver_feature", 4),
    0x10: ("config_msix_vector", 2),
    0x12: ("num_queues", 2),
    0x14: ("device_status", 1),
    0x15: ("config_generation", 1),
    0x16: ("queue_select", 2),
    0x18: ("queue_size", 2),
    0x1A: ("queue_msix_vector", 2),
    0x1C: ("queue_enable", 2),
    0x1E: ("queue_notify_off", 2),
    0x20: ("queue_desc", 8),
    0x28: ("queue_driver", 8),
    0x30: ("queue_device", 8),
}
_ADDRESS_FIELDS = {"queue_desc": "desc", "queue_driver": "avail", "queue_device": "used"}


@dataclass(frozen=True, slots=True)
class VirtioCap:
    """One virtio_pci_cap: which structure, where in the BAR, and for notify the multiplier."""

    cfg_type: int
    offset: int
    length: int
    notify_multiplier: int | None = None


def capabilities(queue_count: int) -> list[VirtioCap]:
    return [
        VirtioCap(PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LENGTH),
        VirtioCap(PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_LENGTH),
        VirtioCap(PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_LENGTH),
        VirtioCap(PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, max(1, queue_count) * NOTIFY_MULTIPLIER, NOTIFY_MULTIPLIER),
    ]


def notify_offset(queue_index: int) -> int:
    """Where in the BAR the driver writes to kick queue ``queue_index`` (queue_notify_off = index)."""
    return NOTIFY_OFFSET + queue_index * NOTIFY_MULTIPLIER


class ModernRegisters(Device):
    """The modern BAR as one bus device over a ``VirtioTransport``."""

    state_fields = ()  # a decoder over the transport, whose state VirtioPci saves

    def __init__(self, transport: VirtioTransport) -> None:
        super().__init__()
        self.t = transport
        self.name = f"{transport.device.name} modern"

    def read(self, offset: int, size: int) -> int:
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_LENGTH:
            return self._common_read(offset - COMMON_OFFSET, size)
        if offset == ISR_OFFSET and size == 1:
            return self.t.read_isr()
        if DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_LENGTH:
            return self.t.read_config(offset - DEVICE_OFFSET, size)
        if offset >= NOTIFY_OFFSET:
            return 0  # notification registers are write-only
        self.guest_error(f"read of {size} bytes at {offset:#x}")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if COMMON_OFFSET <= offset < COMMON_OFFSET + COMMON_LENGTH:
            self._common_write(offset - COMMON_OFFSET, size, value)
        elif DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_LENGTH:
            self.t.write_config(offset - DEVICE_OFFSET, size, value)
        elif offset >= NOTIFY_OFFSET and (offset - NOTIFY_OFFSET) % NOTIFY_MULTIPLIER == 0:
            self.t.notify((offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER)
        else:
            self.guest_error(f"write of {size} bytes at {offset:#x}")

    # -- common configuration -------------------------------------------------------------------
    def _field(self, offset: int, size: int) -> tuple[str, int] | None:
        """(field name, byte offset inside it) for an access of the field's width (or a dword half
        of a 64-bit address), else None."""
        entry = COMMON_FIELDS.get(offset)
        if entry is not None and (size == entry[1] or entry[1] == 8 and size == 4):
            return entry[0], 0
        entry = COMMON_FIELDS.get(offset - 4)
        if entry is not None and entry[1] == 8 and size == 4:
            return entry[0], 4
        return None

    def _common_read(self, offset: int, size: int) -> int:
        found = self._field(offset, size)
        if found is None:
            self.guest_error(f"common config read of {size} bytes at {offset:#x}")
            return 0
        name, half = found
        with self.t.lock:
            value = self._common_value(name)
        return (value >> (8 * half)) & ((1 << (8 * size)) - 1)

    def _common_value(self, name: str) -> int:
        t, q = self.t, self.t.selected
        simple = {
            "device_feature_select": t.device_feature_select,
            "device_feature": t.device_feature_word(t.device_feature_select),
            "driver_feature_select": t.driver_feature_select,
            "driver_feature": t.driver_feature_word(t.driver_feature_select),
            "config_msix_vector": t.config_vector,
            "num_queues": len(t.queues),
            "device_status": t.status,
            "config_generation": t.config_generation,
            "queue_select": t.queue_select,
        }
        if name in simple:
            return simple[name]
        if q is None:  # a queue that does not exist reads as size 0, everything else 0 (§4.1.4.3)
            return MSI_NO_VECTOR if name == "queue_msix_vector" else 0
        if name in _ADDRESS_FIELDS:
            return int(getattr(q, _ADDRESS_FIELDS[name]))
        return {
            "queue_size": q.size,
            "queue_msix_vector": q.vector,
            "queue_enable": int(q.enabled),
            "queue_notify_off": t.queue_select,
        }[name]

    def _common_write(self, offset: int, size: int, value: int) -> None:
        found = self._field(offset, size)
        if found is None:
            self.guest_error(f"common config write of {size} bytes at {offset:#x}")
            return
        name, half = found
        t = self.t
        with t.lock:
            if name == "device_status":
                t.write_status(value)
            elif name == "device_feature_select":
                t.device_feature_select = value
            elif name == "driver_feature_select":
                t.driver_feature_select = value
            elif name == "driver_feature":
                t.set_driver_feature_word(t.driver_feature_select, value)
            elif name == "config_msix_vector":
                t.config_vector = t.checked_vector(value)
            elif name == "queue_select":
                t.queue_select = value
            elif name.startswith("queue_") and name not in ("queue_notify_off",):
                self._queue_write(name, half, size, value)
            else:
                self.guest_error(f"write to read-only {name}")

    def _queue_write(self, name: str, half: int, size: int, value: int) -> None:
        t = self.t
        if name == "queue_msix_vector":  # may change at any time, like the config vector
            if t.selected is not None:
                t.selected.vector = t.checked_vector(value)
            return
        q = t.queue_config_writable(name)
        if q is None:
            return
        if name == "queue_size":
            q.size = value  # checked at DRIVER_OK (power of two, <= max)
        elif name == "queue_enable":
            if value == 1:
                q.enabled = True
            else:
                t.guest_error("queue_enable written with a value other than 1")
        else:
            attr = _ADDRESS_FIELDS[name]
            width_mask = ((1 << (8 * size)) - 1) << (8 * half)
            old = int(getattr(q, attr))
            setattr(q, attr, (old & ~width_mask) | ((value << (8 * half)) & width_mask))
