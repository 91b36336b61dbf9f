"""MSI and MSI-X capabilities: message storage, masking, pending bits, delivery through an ``MsiSink``.

MSI (capability 0x05, in configuration space)
    Control: bit 0 enable (RW), bits 3:1 vectors capable (RO), bits 6:4 vectors enabled (RW), bit 7
    64-bit address (RO), bit 8 per-vector masking (RO). Address low bits 1:0 read 0. With per-vector
    masking the cap also has Mask (RW, one bit per capable vector) and Pending (RO) registers.
    ``notify(v)`` sends (address, data | v) when MSI is enabled and ``v`` is below the enabled count;
    if vector ``v`` is masked it sets its pending bit instead, and clearing the mask bit (a config
    write) sends the message and clears the pending bit. With MSI disabled nothing is sent (counted
    in ``dropped``; Broiler sent regardless of the enable bit).

MSI-X (capability 0x11; table and PBA inside a BAR)
    Control: bits 10:0 table size - 1 (RO), bit 14 function mask (RW), bit 15 enable (RW). Table
    entries are 16 bytes {addr_lo (bits 1:0 read 0), addr_hi, data, vector control (bit 0 mask)};
    every entry starts masked. The PBA is read-only, one bit per vector, in 64-bit words.
    ``notify(v)`` with MSI-X enabled: if the function or the vector is masked, set the pending bit;
    otherwise send the entry's message. Unmasking (vector control write, function-mask clear or
    enable) sends every pending, now-unmasked vector once and clears its bit. With MSI-X disabled
    nothing is sent or latched (``dropped``).
    Table and PBA accept aligned 4- and 8-byte accesses only (the PCI spec's rule); any other access
    reads all ones, is dropped, and counts a guest error. PBA writes are dropped and counted.

Both are thread-safe: ``notify`` runs on event-loop/timer threads while the guest writes the
registers from vCPU threads. The sink is called without any lock held.
"""

from __future__ import annotations

import threading

from ..core.bus import Device, all_ones
from ..core.irq import MsiMessage, MsiSink
from .config import CAP_ID_MSI, CAP_ID_MSIX, ConfigSpace

MSI_CTRL_ENABLE = 0x0001
MSI_CTRL_64BIT = 0x0080
MSI_CTRL_PVM = 0x0100

MSIX_CTRL_MASKALL = 0x4000
MSIX_CTRL_ENABLE = 0x8000
MSIX_ENTRY_SIZE = 16
MSIX_ENTRY_CTRL = 12
MSIX_ENTRY_MASKBIT = 0x1
MSIX_MAX_VECTORS = 2048
_ENTRY_WMASK = bytes([0xFC, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0x00])


class MsiCapability:
    """An MSI capability placed in ``config``; ``offset`` is where it lives."""

    def __init__(
        self, config: ConfigSpace, sink: MsiSink, *, vectors: int = 1, is64: bool = False, per_vector_mask: bool = False
    ) -> None:
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"MSI vectors must be a power of two up to 32, not {vectors}")
        self.config = config
        self.sink = sink
        self.vectors = vectors
        self.is64 = is64
        self.per_vector_mask = per_vector_mask
        self.length = (0x0E if is64 else 0x0A) + (0x0A if per_vector_mask else 0)
        o = self.offset = config.add_capability(CAP_ID_MSI, self.length)
        ctrl = ((vectors.bit_length() - 1) << 1) | (MSI_CTRL_64BIT if is64 else 0)
        ctrl |= MSI_CTRL_PVM if per_vector_mask else 0
        config.set(o + 2, 2, ctrl)
        config.set_masks(o + 2, 2, wmask=0x0071)
        config.set_masks(o + 4, 4, wmask=0xFFFF_FFFC)
        if is64:
            config.set_masks(o + 8, 4, wmask=0xFFFF_FFFF)
        self.data_offset = o + (0x0C if is64 else 0x08)
        config.set_masks(self.data_offset, 2, wmask=0xFFFF)
        self.mask_offset = self.data_offset + 4
        self.pending_offset = self.mask_offset + 4
        if per_vector_mask:
            config.set_masks(self.mask_offset, 4, wmask=(1 << vectors) - 1)
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0

    # -- register views --------------------------------------------------------------------
    @property
    def control(self) -> int:
        return self.config.get(self.offset + 2, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSI_CTRL_ENABLE)

    @property
    def enabled_vectors(self) -> int:
        return min(1 << ((self.control >> 4) & 7), self.vectors)

    @property
    def address(self) -> int:
        addr = self.config.get(self.offset + 4, 4)
        if self.is64:
            addr |= self.config.get(self.offset + 8, 4) << 32
        return addr

    @property
    def data(self) -> int:
        return self.config.get(self.data_offset, 2)

    @property
    def mask(self) -> int:
        return self.config.get(self.mask_offset, 4) if self.per_vector_mask else 0

    @property
    def pending(self) -> int:
        return self.config.get(self.pending_offset, 4) if self.per_vector_mask else 0

    def message(self, vector: int) -> MsiMessage:
        n = self.enabled_vectors
        return MsiMessage(self.address, (self.data & ~(n - 1)) | vector)

    # -- delivery --------------------------------------------------------------------------
    def notify(self, vector: int = 0) -> bool:
        """Signal ``vector``; True if a message went out now."""
        with self._lock:
            if not self.enabled or vector >= self.enabled_vectors:
                self.dropped += 1
                return False
            if self.mask & (1 << vector):
                self.config.update_bits(self.pending_offset, 4, 1 << vector, True)
                return False
            msg = self.message(vector)
        self.sink(msg)
        self.sent += 1
        return True

    def config_written(self) -> None:
        """The guest wrote inside the capability: send what an unmask released."""
        out: list[MsiMessage] = []
        with self._lock:
            if not (self.per_vector_mask and self.enabled):
                return
            ready = self.pending & ~self.mask
            for v in range(self.enabled_vectors):
                if ready & (1 << v):
                    self.config.update_bits(self.pending_offset, 4, 1 << v, False)
                    out.append(self.message(v))
        for msg in out:
            self.sink(msg)
            self.sent += 1


class MsixCapability:
    """An MSI-X capability in ``config`` whose table and PBA sit in BAR ``bar``."""

    def __init__(
        self, config: ConfigSpace, sink: MsiSink, *, bar: int, vectors: int, table_offset: int, pba_offset: int
    ) -> None:
        if not 1 <= vectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X vectors must be 1..2048, not {vectors}")
        if table_offset % 8 or pba_offset % 8:
            raise ValueError("MSI-X table and PBA offsets must be 8-byte aligned")
        if not 0 <= bar <= 5:
            raise ValueError(f"bad MSI-X BAR {bar}")
        self.config = config
        self.sink = sink
        self.bar = bar
        self.vectors = vectors
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.table_size = vectors * MSIX_ENTRY_SIZE
        self.pba_size = (vectors + 63) // 64 * 8
        if table_offset < pba_offset + self.pba_size and pba_offset < table_offset + self.table_size:
            raise ValueError("MSI-X table and PBA overlap")
        self.length = 12
        o = self.offset = config.add_capability(CAP_ID_MSIX, self.length)
        config.set(o + 2, 2, vectors - 1)
        config.set_masks(o + 2, 2, wmask=MSIX_CTRL_MASKALL | MSIX_CTRL_ENABLE)
        config.set(o + 4, 4, table_offset | bar)
        config.set(o + 8, 4, pba_offset | bar)
        self.table = bytearray(self.table_size)
        for v in range(vectors):
            self.table[v * MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL] = MSIX_ENTRY_MASKBIT
        self.pba = bytearray(self.pba_size)
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self.table_device = MsixTableDevice(self)
        self.pba_device = MsixPbaDevice(self)

    # -- register views --------------------------------------------------------------------
    @property
    def control(self) -> int:
        return self.config.get(self.offset + 2, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSIX_CTRL_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & MSIX_CTRL_MASKALL)

    def entry(self, vector: int) -> tuple[int, int, int]:
        """(address, data, vector control) of a table entry."""
        e = self.table[vector * MSIX_ENTRY_SIZE : (vector + 1) * MSIX_ENTRY_SIZE]
        return (int.from_bytes(e[0:8], "little"), int.from_bytes(e[8:12], "little"), int.from_bytes(e[12:16], "little"))

    def vector_masked(self, vector: int) -> bool:
        return bool(self.table[vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL] & MSIX_ENTRY_MASKBIT)

    def is_pending(self, vector: int) -> bool:
        return bool(self.pba[vector // 8] & (1 << (vector % 8)))

    def _set_pending(self, vector: int, on: bool) -> None:
        bit = 1 << (vector % 8)
        if on:
            self.pba[vector // 8] |= bit
        else:
            self.pba[vector // 8] &= ~bit & 0xFF

    # -- delivery --------------------------------------------------------------------------
    def notify(self, vector: int = 0) -> bool:
        """Signal ``vector``; True if a message went out now, False if dropped or left pending."""
        with self._lock:
            if not self.enabled or not 0 <= vector < self.vectors:
                self.dropped += 1
                return False
            if self.function_masked or self.vector_masked(vector):
                self._set_pending(vector, True)
                return False
            addr, data, _ = self.entry(vector)
        self.sink(MsiMessage(addr, data))
        self.sent += 1
        return True

    def deliver_pending(self) -> int:
        """Send every pending vector that is no longer masked; returns how many went."""
        out: list[MsiMessage] = []
        with self._lock:
            if not self.enabled or self.function_masked:
                return 0
            for index, byte in enumerate(self.pba):
                if not byte:
                    continue
                for bit in range(8):
                    v = index * 8 + bit
                    if byte & (1 << bit) and v < self.vectors and not self.vector_masked(v):
                        self._set_pending(v, False)
                        addr, data, _ = self.entry(v)
                        out.append(MsiMessage(addr, data))
        for msg in out:
            self.sink(msg)
            self.sent += 1
        return len(out)

    def config_written(self) -> None:
        self.deliver_pending()

    # -- guest access to the table and PBA (from the BAR) ----------------------------------
    def table_read(self, offset: int, size: int) -> int:
        with self._lock:
            return int.from_bytes(self.table[offset : offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for i in range(size):
                at = offset + i
                wm = _ENTRY_WMASK[at % MSIX_ENTRY_SIZE]
                self.table[at] = (self.table[at] & ~wm) | ((value >> (8 * i)) & wm)
        self.deliver_pending()

    def pba_read(self, offset: int, size: int) -> int:
        with self._lock:
            return int.from_bytes(self.pba[offset : offset + size], "little")


def _aligned(offset: int, size: int, length: int) -> bool:
    return size in (4, 8) and offset % size == 0 and offset >= 0 and offset + size <= length


class MsixTableDevice(Device):
    """The MSI-X table as a register block (offsets from the table start)."""

    name = "msix-table"

    def __init__(self, cap: MsixCapability) -> None:
        super().__init__()
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        if not _aligned(offset, size, self.cap.table_size):
            self.guest_error(f"MSI-X table read of {size} bytes at {offset:#x}")
            return all_ones(size)
        return self.cap.table_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if not _aligned(offset, size, self.cap.table_size):
            self.guest_error(f"MSI-X table write of {size} bytes at {offset:#x}")
            return
        self.cap.table_write(offset, size, value)


class MsixPbaDevice(Device):
    """The MSI-X pending bit array (read-only)."""

    name = "msix-pba"

    def __init__(self, cap: MsixCapability) -> None:
        super().__init__()
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        if not _aligned(offset, size, self.cap.pba_size):
            self.guest_error(f"MSI-X PBA read of {size} bytes at {offset:#x}")
            return all_ones(size)
        return self.cap.pba_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.guest_error("MSI-X PBA write (read-only)")
