"""The coalesced MMIO/PIO ring: which zones queue their writes there, and replaying it onto the buses.

KVM keeps one ring per VM and maps it into every vCPU's kvm_run mapping (page
``KVM_CAP_COALESCED_MMIO`` of it), so any vCPU can drain it; the lock keeps that to one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..kvm import abi
from .bus import MmioBus, PioBus

CompiledDrain = Callable[[int, PioBus, MmioBus], int]  # core/_fastexit.c's drain(ring_addr, pio_bus, mmio_bus)

# struct kvm_coalesced_mmio_ring {u32 first, last; struct kvm_coalesced_mmio entries[];}
# struct kvm_coalesced_mmio {u64 phys_addr; u32 len; u32 pio; u8 data[8];}  (linux/kvm.h)
_RING_FIRST, _RING_LAST = 0, 1  # u32 indices
_RING_ENTRIES = 8
_ENTRY_SIZE = 24
_ENTRY_LEN, _ENTRY_PIO, _ENTRY_DATA = 8, 12, 16


class CoalescedRing:
    """Per VM: the registered zones (base, size, pio) and the replay of the ring, oldest first."""

    def __init__(self, pio_bus: PioBus, mmio_bus: MmioBus) -> None:
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        # Appended to in place: a vCPU loop holding this list sees a zone added later at once. The
        # loops look at the ring only while it is non-empty.
        self.zones: list[tuple[int, int, bool]] = []
        self.lock = threading.Lock()

    def drain(self, ring: memoryview, ring32: memoryview) -> int:
        """Replay every entry of ``ring`` (one vCPU's view of the ring page; ``ring32`` the same page
        cast to u32, made once by the caller) as a write on its bus."""
        n = 0
        with self.lock:
            first, last = ring32[_RING_FIRST], ring32[_RING_LAST]
            while first != last:
                base = _RING_ENTRIES + first * _ENTRY_SIZE
                phys = int.from_bytes(ring[base : base + _ENTRY_LEN], "little")
                length = int.from_bytes(ring[base + _ENTRY_LEN : base + _ENTRY_PIO], "little")
                pio = int.from_bytes(ring[base + _ENTRY_PIO : base + _ENTRY_DATA], "little")
                data = base + _ENTRY_DATA
                value = int.from_bytes(ring[data : data + min(length, 8)], "little")
                (self.pio_bus if pio else self.mmio_bus).replay(phys, length, value)
                first = (first + 1) % abi.KVM_COALESCED_MMIO_MAX
                ring32[_RING_FIRST] = first
                n += 1
        return n

    def drain_compiled(self, ring_addr: int, compiled_drain: CompiledDrain) -> int:
        """The same replay done in C by the compiled loop's ``drain`` (the ring page's address), under the
        same lock: the calls reach the same ``replay`` methods, only the ring decoding is not Python."""
        with self.lock:
            return compiled_drain(ring_addr, self.pio_bus, self.mmio_bus)
