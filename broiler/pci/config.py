"""A type-0 PCI configuration space: 256 bytes with per-byte writable and write-1-to-clear masks.

Every guest write goes through the masks, byte by byte::

    new = (old & ~wmask) | (value & wmask)        # writable bits take the written value
    new &= ~(value & w1cmask)                     # write-1-to-clear bits clear where a 1 is written

so read-only bytes (IDs, class, header type, capability pointers, unimplemented BARs, the ROM BAR)
keep their value whatever the guest writes, without Broiler's "a register that reads zero is
read-only" hack. BAR sizing falls out of the same rule: a BAR's writable bits are its address bits,
so writing all ones reads back the size mask with the (read-only) type bits.

``set``/``get`` are the host's raw accessors (no masks), used to build the header and by devices to
update read-only state (interrupt status, MSI pending bits).
"""

from __future__ import annotations

import threading

from ..core.bus import all_ones

CONFIG_SPACE_SIZE = 0x100

# Type-0 header registers.
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09  # class code: prog-if 0x09, subclass 0x0A, base class 0x0B
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
BAR_COUNT = 6
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F
CAPABILITY_START = 0x40

# Command register bits.
CMD_IO = 0x0001
CMD_MEMORY = 0x0002
CMD_MASTER = 0x0004
CMD_PARITY = 0x0040
CMD_SERR = 0x0100
CMD_INTX_DISABLE = 0x0400
CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE

# Status register bits.
STATUS_INTERRUPT = 0x0008  # read-only: INTx is asserted by the function
STATUS_CAP_LIST = 0x0010  # read-only: the capability list exists
STATUS_W1C = 0xF900  # parity / target abort / master abort / SERR / detected parity: write 1 to clear

# Capability IDs.
CAP_ID_MSI = 0x05
CAP_ID_MSIX = 0x11

# BAR low bits.
BAR_IO_SPACE = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8


def _bytes(value: int, size: int) -> bytes:
    return (value & all_ones(size)).to_bytes(size, "little")


class ConfigSpace:
    """256 bytes of configuration space and its write masks. Offsets must be inside [0, 256)."""

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self._lock = threading.Lock()
        self._cap_tail = CAPABILITY_LIST  # where the next capability's offset gets linked
        self._cap_next = CAPABILITY_START  # first free byte for a capability
        # Standard writable registers of a type-0 header.
        self.set_masks(COMMAND, 2, wmask=CMD_WRITABLE)
        self.set_masks(STATUS, 2, w1c=STATUS_W1C)
        self.set_masks(CACHE_LINE_SIZE, 1, wmask=0xFF)
        self.set_masks(LATENCY_TIMER, 1, wmask=0xFF)
        self.set_masks(INTERRUPT_LINE, 1, wmask=0xFF)

    # -- host side -------------------------------------------------------------------------
    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self.data[offset : offset + size] = _bytes(value, size)

    def update_bits(self, offset: int, size: int, mask: int, on: bool) -> None:
        """Set (``on``) or clear the bits of ``mask`` in a register, atomically."""
        with self._lock:
            value = int.from_bytes(self.data[offset : offset + size], "little")
            value = value | mask if on else value & ~mask
            self.data[offset : offset + size] = _bytes(value, size)

    def set_masks(self, offset: int, size: int, *, wmask: int | None = None, w1c: int | None = None) -> None:
        if wmask is not None:
            self.wmask[offset : offset + size] = _bytes(wmask, size)
        if w1c is not None:
            self.w1cmask[offset : offset + size] = _bytes(w1c, size)

    def add_capability(self, cap_id: int, length: int) -> int:
        """Reserve ``length`` bytes for a capability, link it at the end of the list, return its offset."""
        offset = self._cap_next
        if offset + length > CONFIG_SPACE_SIZE:
            raise ValueError(f"no room for a {length}-byte capability at {offset:#x}")
        self.set(offset, 1, cap_id)
        self.set(offset + 1, 1, 0)
        self.set(self._cap_tail, 1, offset)
        self.update_bits(STATUS, 2, STATUS_CAP_LIST, True)
        self._cap_tail = offset + 1
        self._cap_next = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, id) of each capability, walking the list as a guest would (loop-safe)."""
        found: list[tuple[int, int]] = []
        if not self.get(STATUS, 2) & STATUS_CAP_LIST:
            return found
        ptr = self.get(CAPABILITY_LIST, 1) & ~3
        while ptr and len(found) < 48:
            found.append((ptr, self.get(ptr, 1)))
            ptr = self.get(ptr + 1, 1) & ~3
        return found

    # -- guest side ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: writable bits merge, write-1-to-clear bits clear, the rest stay."""
        with self._lock:
            for i in range(size):
                at = offset + i
                v = (value >> (8 * i)) & 0xFF
                wm = self.wmask[at]
                new = (self.data[at] & ~wm) | (v & wm)
                self.data[at] = new & ~(v & self.w1cmask[at]) & 0xFF
