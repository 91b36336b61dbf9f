"""The transport-independent half of virtio over PCI (virtio 1.2 §2.1-2.4, §4.1.4-4.1.5): status,
feature negotiation, queue configuration, ISR, MSI-X vectors, reset. Both register files (modern
``modern.py`` and legacy ``legacy.py``) are thin decoders over this one state machine.

Rules kept here:

- **Features.** The device offers its own bits plus VERSION_1 (except on a legacy-only function),
  INDIRECT_DESC and EVENT_IDX. A modern driver's FEATURES_OK is refused (the bit stays clear) if it
  accepted a bit that was not offered or did not accept VERSION_1. A legacy driver has no
  FEATURES_OK: whatever of its 32 bits was offered is kept, the rest dropped.
- **Status.** 0 resets. The driver may only add bits. DRIVER_OK activates the enabled queues (each
  is checked: a bad size or ring placement sets DEVICE_NEEDS_RESET instead). A modern driver must
  have FEATURES_OK before DRIVER_OK.
- **Kicks** before DRIVER_OK, after DEVICE_NEEDS_RESET, or for a queue that does not exist or is not
  enabled are ignored and counted.
- **Interrupts.** With MSI-X enabled, a queue's or the config vector's message (none for
  NO_VECTOR); otherwise the ISR bit and INTx, lowered when the guest reads the ISR.
- **Locks.** ``lock`` guards what the driver configures (vCPU threads); ``_irq_lock`` guards the ISR,
  interrupt delivery and the DEVICE_NEEDS_RESET bit, which device threads touch. A reset holds
  ``lock`` while it waits for the device's IO thread, so that thread must never need ``lock``.
- **Reset** stops the device (the block worker finishes its in-flight request and exits), then
  forgets queues, features, vectors and the ISR.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from .chain import Memory
from .device import COMMON_FEATURES, VirtioDevice
from .queue import Virtqueue, VirtqueueError, legacy_layout
from .spec import (
    F_RING_EVENT_IDX,
    F_RING_INDIRECT_DESC,
    F_VERSION_1,
    ISR_CONFIG,
    ISR_QUEUE,
    MSI_NO_VECTOR,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_FEATURES_OK,
    bit,
)

log = logging.getLogger("broiler.virtio")


class InterruptPins(Protocol):
    """What the PCI glue gives the transport: MSI-X state and delivery, and the INTx level."""

    def msix_enabled(self) -> bool: ...

    def msix_vectors(self) -> int: ...

    def msix_notify(self, vector: int) -> None: ...

    def set_intx_level(self, level: bool) -> None: ...


class VirtioTransport:
    """One virtio function's common state. ``guest_error(what)`` counts a driver mistake."""

    def __init__(self, device: VirtioDevice, memory: Memory, pins: InterruptPins, *, modern: bool = True) -> None:
        self.device = device
        self.memory = memory
        self.pins = pins
        self.offered = device.device_features() | COMMON_FEATURES
        if not modern:
            self.offered &= ~bit(F_VERSION_1)
        self.queues = [Virtqueue(size) for size in device.queue_max_sizes]
        self.lock = threading.RLock()
        self._irq_lock = threading.Lock()
        self.guest_errors = 0
        self.ignored_kicks = 0
        self.resets = 0
        self.needs_reset_reason: str | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = MSI_NO_VECTOR
        self.config_generation = 0
        self.isr = 0
        self.legacy_driver = False
        for q in self.queues:
            q.reset()

    def guest_error(self, what: str) -> None:
        self.guest_errors += 1
        log.debug("%s: guest error: %s", self.device.name, what)

    # -- features -------------------------------------------------------------------------------
    def device_feature_word(self, select: int) -> int:
        return (self.offered >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    def set_driver_feature_word(self, select: int, value: int) -> None:
        with self.lock:
            if self.status & STATUS_FEATURES_OK or select > 1:
                self.guest_error(f"driver feature write (word {select}) after FEATURES_OK or past word 1")
                return
            mask = 0xFFFF_FFFF << (32 * select)
            self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFF_FFFF) << (32 * select))

    def driver_feature_word(self, select: int) -> int:
        return (self.driver_features >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    def set_legacy_features(self, value: int) -> None:
        """The legacy interface's 32-bit guest features: keep what was offered."""
        with self.lock:
            self.legacy_driver = True
            self.driver_features = value & self.offered & 0xFFFF_FFFF

    def _features_acceptable(self) -> str | None:
        unknown = self.driver_features & ~self.offered
        if unknown:
            return f"driver accepted features {unknown:#x} that were not offered"
        if not self.driver_features & bit(F_VERSION_1):
            return "a modern driver must accept VERSION_1"
        return None

    # -- status ---------------------------------------------------------------------------------
    def write_status(self, value: int) -> None:
        value &= 0xFF
        with self.lock:
            if value == 0:
                self.reset()
                return
            old = self.status
            if old & ~value & ~STATUS_DEVICE_NEEDS_RESET:
                self.guest_error(f"status write {value:#x} clears bits of {old:#x}")
                return
            new = value | (old & STATUS_DEVICE_NEEDS_RESET)
            if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
                problem = self._features_acceptable()
                if problem is not None:
                    self.guest_error(f"FEATURES_OK refused: {problem}")
                    new &= ~STATUS_FEATURES_OK
            with self._irq_lock:  # a device thread may have set NEEDS_RESET meanwhile
                self.status = new | (self.status & STATUS_DEVICE_NEEDS_RESET)
            if new & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
                self._driver_ok()
            if new & STATUS_FAILED and not old & STATUS_FAILED:
                self.device.reset()  # the driver gave up: stop using its memory

    def _driver_ok(self) -> None:
        if not self.legacy_driver and not self.status & STATUS_FEATURES_OK:
            self.set_needs_reset("DRIVER_OK without FEATURES_OK")
            return
        features = self.driver_features
        try:
            for q in self.queues:
                if q.enabled:
                    q.activate(
                        self.memory,
                        event_idx=bool(features & bit(F_RING_EVENT_IDX)),
                        indirect=bool(features & bit(F_RING_INDIRECT_DESC)),
                    )
        except VirtqueueError as err:
            self.set_needs_reset(str(err))
            return
        self.device.activate(self.memory, self.queues, self, features)

    @property
    def driver_ok(self) -> bool:
        return bool(self.status & STATUS_DRIVER_OK) and not self.status & STATUS_DEVICE_NEEDS_RESET

    def reset(self) -> None:
        """Device reset (status 0): the device stops and drops every reference to guest memory."""
        with self.lock:
            self.device.reset()
            with self._irq_lock:
                self._reset_state()
                self.needs_reset_reason = None
                self.resets += 1
                self.pins.set_intx_level(False)

    # -- the device's notifier ----------------------------------------------------------------
    def set_needs_reset(self, reason: str) -> None:
        with self._irq_lock:
            if self.status & STATUS_DEVICE_NEEDS_RESET:
                return
            self.needs_reset_reason = reason
            self.device.stats.errors += 1
            log.warning("%s: DEVICE_NEEDS_RESET: %s", self.device.name, reason)
            self.status |= STATUS_DEVICE_NEEDS_RESET
            self._interrupt(ISR_CONFIG, self.config_vector)

    needs_reset = set_needs_reset

    def queue_used(self, queue_index: int) -> None:
        with self._irq_lock:
            if 0 <= queue_index < len(self.queues):
                self._interrupt(ISR_QUEUE, self.queues[queue_index].vector)

    def config_changed(self) -> None:
        with self._irq_lock:
            self.config_generation = (self.config_generation + 1) & 0xFF
            self._interrupt(ISR_CONFIG, self.config_vector)

    def _interrupt(self, isr_bit: int, vector: int) -> None:
        if self.pins.msix_enabled():
            if vector != MSI_NO_VECTOR:
                self.pins.msix_notify(vector)
            return
        self.isr |= isr_bit
        self.pins.set_intx_level(True)

    def read_isr(self) -> int:
        """Reading the ISR returns it and clears it, which lowers INTx (§4.1.4.5)."""
        with self._irq_lock:
            value, self.isr = self.isr, 0
            self.pins.set_intx_level(False)
            return value

    # -- queues ---------------------------------------------------------------------------------
    @property
    def selected(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def queue_config_writable(self, what: str) -> Virtqueue | None:
        """The selected queue if the driver may still configure it, else None (a guest error)."""
        q = self.selected
        if q is None:
            self.guest_error(f"{what} for queue {self.queue_select}, which does not exist")
            return None
        if self.status & STATUS_DRIVER_OK or q.enabled and not self.legacy_driver:
            self.guest_error(f"{what} of queue {self.queue_select} after it was enabled")
            return None
        return q

    def set_legacy_pfn(self, pfn: int) -> None:
        """Legacy queue address register: the ring lives at pfn * 4096; 0 disables the queue."""
        with self.lock:
            self.legacy_driver = True
            q = self.queue_config_writable("queue PFN")
            if q is None:
                return
            q.size = q.max_size  # legacy queues have a fixed size
            q.desc, q.avail, q.used = legacy_layout(pfn, q.size)
            q.enabled = pfn != 0

    def checked_vector(self, vector: int) -> int:
        """A vector the driver asked for, or NO_VECTOR if the MSI-X table has no such entry."""
        vector &= 0xFFFF
        return vector if vector < self.pins.msix_vectors() else MSI_NO_VECTOR

    def notify(self, queue_index: int) -> None:
        """A doorbell (ioeventfd or a trapped write) for queue ``queue_index``."""
        with self.lock:
            q = self.queues[queue_index] if 0 <= queue_index < len(self.queues) else None
            if not self.driver_ok or q is None or not q.active:
                self.ignored_kicks += 1
                return
        self.device.stats.kicks += 1
        self.device.notify(queue_index)

    # -- device configuration -------------------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        data = self.device.config()
        if offset < 0 or offset + size > len(data):
            self.guest_error(f"config read of {size} bytes at {offset:#x} (config is {len(data)} bytes)")
            return 0
        return int.from_bytes(data[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        if not self.device.write_config(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")):
            self.guest_error(f"config write of {size} bytes at {offset:#x} (read-only)")
