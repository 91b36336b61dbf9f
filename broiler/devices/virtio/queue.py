"""A split virtqueue (virtio 1.2 §2.7) over guest memory, written for a hostile guest.

The driver owns three areas in guest RAM: the descriptor table (16 bytes per entry), the available
ring (flags, idx, ring[size], used_event) and the used ring (flags, idx, ring[size] of {id, len},
avail_event). The device pops chains from the available ring and pushes used elements back.

Every guest-controlled number is checked before it is used, and every guest access goes through
``Memory`` (which refuses anything outside RAM). A broken ring raises ``VirtqueueError``; the
transport turns that into DEVICE_NEEDS_RESET. The rules:

- the queue size is a power of two, 1..max_size; the rings are aligned (16/2/4) and inside RAM;
- the available index may run at most ``size`` entries ahead of what the device has consumed;
- a head or ``next`` index must be below the size of the table it indexes;
- a chain visits at most ``size`` descriptors of the ring table (this also catches loops) and at most
  the entry count of an indirect table, so work and memory per chain are bounded by the queue size;
- INDIRECT only when negotiated, never inside an indirect table, never together with NEXT, with a
  table length that is a non-zero multiple of 16 and at most ``size`` entries, inside RAM;
- every buffer lies wholly inside RAM; no readable buffer follows a writable one (§2.7.4.2).
"""

from __future__ import annotations

import struct

from ...errors import BroilerError, GuestMemoryError
from .chain import Chain, Memory, Segment
from .spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, LEGACY_VRING_ALIGN, USED_ELEM_SIZE

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_AVAIL_NO_INTERRUPT = 1


class VirtqueueError(BroilerError):
    """The driver broke the ring rules; the device must stop using this queue (DEVICE_NEEDS_RESET)."""


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.10: notify when ``event_idx`` lies in the window (old_idx, new_idx] (16-bit arithmetic)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def legacy_layout(pfn: int, size: int) -> tuple[int, int, int]:
    """(desc, avail, used) of a legacy ring at page ``pfn``: used starts on the next 4 KiB boundary."""
    desc = pfn * LEGACY_VRING_ALIGN
    avail = desc + DESC_SIZE * size
    used = (avail + 6 + 2 * size + LEGACY_VRING_ALIGN - 1) & ~(LEGACY_VRING_ALIGN - 1)
    return desc, avail, used


class Virtqueue:
    """One split virtqueue: configuration (what the transport's registers set) plus ring state."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1 or max_size > 32768 or max_size & (max_size - 1):
            raise ValueError(f"bad virtqueue max size {max_size}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc = self.avail = self.used = 0
        self.enabled = False
        self.vector = 0xFFFF  # MSI-X vector, owned by the transport
        self.event_idx = False
        self.indirect = False
        self.memory: Memory | None = None
        self.last_avail = 0  # next available-ring slot the device will consume
        self.used_idx = 0  # the used index the device has published
        self._signalled_used = 0  # used_idx when the interrupt decision was last made
        self.chains = 0  # chains popped since activation (for the device's counters)

    # -- activation ---------------------------------------------------------------------------
    def check_layout(self, memory: Memory) -> None:
        """Refuse a size or ring placement the device cannot use (VirtqueueError with the reason)."""
        size = self.size
        if size < 1 or size > self.max_size or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        areas = (
            ("descriptor table", self.desc, DESC_SIZE * size, 16),
            ("available ring", self.avail, 6 + 2 * size, 2),
            ("used ring", self.used, 6 + USED_ELEM_SIZE * size, 4),
        )
        for name, addr, length, align in areas:
            if addr % align:
                raise VirtqueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not memory.contains(addr, length):
                raise VirtqueueError(f"{name} [{addr:#x}, {addr + length:#x}) is not inside guest RAM")

    def activate(self, memory: Memory, *, event_idx: bool, indirect: bool) -> None:
        self.check_layout(memory)
        self.memory = memory
        self.event_idx = event_idx
        self.indirect = indirect
        self.last_avail = self.used_idx = self._signalled_used = 0

    @property
    def active(self) -> bool:
        return self.memory is not None

    def _mem(self) -> Memory:
        if self.memory is None:
            raise VirtqueueError("queue used before activation")
        return self.memory

    def _u16(self, gpa: int) -> int:
        return int.from_bytes(self._mem().read(gpa, 2), "little")

    # -- available side -------------------------------------------------------------------------
    def pending(self) -> int:
        """Chains the driver has made available and the device has not popped."""
        ahead = (self._u16(self.avail + 2) - self.last_avail) & 0xFFFF
        if ahead > self.size:
            raise VirtqueueError(f"available index is {ahead} entries ahead of the device (queue size {self.size})")
        return ahead

    def pop(self) -> Chain | None:
        """The next available chain, or None when the ring is empty (then, with EVENT_IDX, the device
        has asked to be kicked for the next one, with no window for a lost kick)."""
        if not self.pending():
            if not self.event_idx:
                return None
            self._write_u16(self.used + 4 + USED_ELEM_SIZE * self.size, self.last_avail)
            if not self.pending():
                return None
        slot = self.avail + 4 + 2 * (self.last_avail % self.size)
        head = self._u16(slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        self.chains += 1
        return self.walk(head)

    def walk(self, head: int) -> Chain:
        """Follow the chain that starts at descriptor ``head`` (see the module rules)."""
        memory = self._mem()
        chain = Chain(head)
        table, entries, budget = self.desc, self.size, self.size
        index, nested = head, False
        while True:
            if index >= entries:
                raise VirtqueueError(f"descriptor index {index} is outside a table of {entries}")
            if budget == 0:
                raise VirtqueueError(f"chain from head {head} loops or is longer than its table ({entries})")
            budget -= 1
            addr, length, flags, nxt = _DESC.unpack(self._read(memory, table + DESC_SIZE * index, DESC_SIZE))
            if flags & DESC_F_INDIRECT:
                table, entries = self._indirect(memory, addr, length, flags, nested)
                index, budget, nested = 0, entries, True
                continue
            if not memory.contains(addr, length):
                raise VirtqueueError(f"buffer [{addr:#x}, +{length:#x}) is not inside guest RAM")
            if flags & DESC_F_WRITE:
                chain.writable.append(Segment(addr, length))
            elif chain.writable:
                raise VirtqueueError("a device-readable buffer follows a device-writable one")
            else:
                chain.readable.append(Segment(addr, length))
            if not flags & DESC_F_NEXT:
                return chain
            index = nxt

    def _indirect(self, memory: Memory, addr: int, length: int, flags: int, nested: bool) -> tuple[int, int]:
        if not self.indirect:
            raise VirtqueueError("INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC")
        if nested:
            raise VirtqueueError("INDIRECT descriptor inside an indirect table")
        if flags & DESC_F_NEXT:
            raise VirtqueueError("INDIRECT descriptor with NEXT set")
        if length == 0 or length % DESC_SIZE or length // DESC_SIZE > self.size:
            raise VirtqueueError(f"indirect table of {length} bytes (needs 16..{16 * self.size}, a multiple of 16)")
        if addr % DESC_SIZE or not memory.contains(addr, length):
            raise VirtqueueError(f"indirect table [{addr:#x}, +{length:#x}) is misaligned or not inside guest RAM")
        return addr, length // DESC_SIZE

    @staticmethod
    def _read(memory: Memory, gpa: int, size: int) -> bytes:
        try:
            return memory.read(gpa, size)
        except GuestMemoryError as err:
            raise VirtqueueError(str(err)) from None

    # -- used side ------------------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Publish chain ``head`` as used with ``written`` bytes (exactly what the device wrote)."""
        memory = self._mem()
        slot = self.used + 4 + USED_ELEM_SIZE * (self.used_idx % self.size)
        memory.write(slot, _USED_ELEM.pack(head, written & 0xFFFF_FFFF))
        # The element is in memory before the index that exposes it (x86 stores are not reordered).
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._write_u16(self.used + 2, self.used_idx)

    def needs_interrupt(self) -> bool:
        """After pushes: does the driver want an interrupt for them (EVENT_IDX, or NO_INTERRUPT)?"""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            return need_event(self._u16(self.avail + 4 + 2 * self.size), new, old)
        return not self._u16(self.avail) & _AVAIL_NO_INTERRUPT

    def _write_u16(self, gpa: int, value: int) -> None:
        self._mem().write(gpa, (value & 0xFFFF).to_bytes(2, "little"))
