"""The legacy virtio-pci register file (virtio 1.2 §4.1.4.10), as Broiler's IO BAR has it::

    0x00 R32  device features (bits 0-31)     0x0C R16  queue size (fixed: the maximum)
    0x04 RW32 driver features                 0x0E RW16 queue select
    0x08 RW32 queue PFN (ring GPA >> 12)      0x10 W16  queue notify (a doorbell)
    0x12 RW8  device status                   0x13 R8   ISR (reading clears it, lowers INTx)
    0x14 RW16 config vector, 0x16 RW16 queue vector    (only while MSI-X is enabled)
    0x14 or 0x18: device configuration

Fixed here (Broiler §7.5): reading 0x12 returns the status, not the ISR; any access width that fits
a field works; device configuration reads are not limited to single bytes.
"""

from __future__ import annotations

from ...core.bus import Device
from .transport import VirtioTransport

HOST_FEATURES, GUEST_FEATURES, QUEUE_PFN, QUEUE_SIZE = 0x00, 0x04, 0x08, 0x0C
QUEUE_SELECT, QUEUE_NOTIFY, STATUS, ISR = 0x0E, 0x10, 0x12, 0x13
CONFIG_VECTOR, QUEUE_VECTOR = 0x14, 0x16
CONFIG_NO_MSIX, CONFIG_MSIX = 0x14, 0x18
BAR_SIZE = 0x100

_WIDTHS = {
    HOST_FEATURES: 4,
    GUEST_FEATURES: 4,
    QUEUE_PFN: 4,
    QUEUE_SIZE: 2,
    QUEUE_SELECT: 2,
    QUEUE_NOTIFY: 2,
    STATUS: 1,
    ISR: 1,
}


class LegacyRegisters(Device):
    """The legacy IO BAR as one bus device over a ``VirtioTransport``."""

    state_fields = ()  # a decoder over the transport, whose state VirtioPci saves

    def __init__(self, transport: VirtioTransport) -> None:
        super().__init__()
        self.t = transport
        self.name = f"{transport.device.name} legacy"

    def _config_start(self) -> int:
        return CONFIG_MSIX if self.t.pins.msix_enabled() else CONFIG_NO_MSIX

    def _register(self, offset: int, size: int) -> int | None:
        if _WIDTHS.get(offset) == size:
            return offset
        if self.t.pins.msix_enabled() and offset in (CONFIG_VECTOR, QUEUE_VECTOR) and size == 2:
            return offset
        return None

    def read(self, offset: int, size: int) -> int:
        start = self._config_start()
        if offset >= start:
            return self.t.read_config(offset - start, size)
        reg = self._register(offset, size)
        t = self.t
        with t.lock:
            q = t.selected
            if reg == HOST_FEATURES:
                return t.device_feature_word(0)
            if reg == GUEST_FEATURES:
                return t.driver_feature_word(0)
            if reg == QUEUE_PFN:
                return q.desc >> 12 if q is not None and q.enabled else 0
            if reg == QUEUE_SIZE:
                return q.max_size if q is not None else 0
            if reg == QUEUE_SELECT:
                return t.queue_select
            if reg == STATUS:
                return t.status
            if reg == ISR:
                return t.read_isr()
            if reg == CONFIG_VECTOR:
                return t.config_vector
            if reg == QUEUE_VECTOR:
                return q.vector if q is not None else 0xFFFF
        if reg != QUEUE_NOTIFY:
            self.guest_error(f"read of {size} bytes at {offset:#x}")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        start = self._config_start()
        if offset >= start:
            self.t.write_config(offset - start, size, value)
            return
        reg = self._register(offset, size)
        t = self.t
        if reg == QUEUE_NOTIFY:
            t.notify(value & 0xFFFF)
            return
        with t.lock:
            if reg == GUEST_FEATURES:
                t.set_legacy_features(value)
            elif reg == QUEUE_PFN:
                t.set_legacy_pfn(value)
            elif reg == QUEUE_SELECT:
                t.queue_select = value
            elif reg == STATUS:
                t.legacy_driver = True
                t.write_status(value)
            elif reg == CONFIG_VECTOR:
                t.config_vector = t.checked_vector(value)
            elif reg == QUEUE_VECTOR and t.selected is not None:
                t.selected.vector = t.checked_vector(value)
            else:
                self.guest_error(f"write of {size} bytes at {offset:#x} (read-only or not a register)")
