"""The seed's synchronous demo devices (spec §6.1, §6.2): one register block on PIO and on MMIO.

Register map (4 x u32)::

    +0x0 SLOT_NUM  read/write  reset 0x20
    +0x4 SLOT_SEL  read/write  reset 0x00
    +0x8 MIN_FREQ  read-only   0x10
    +0xC MAX_FREQ  read-only   0x40

Broiler asserts (and so kills the whole VMM) on any access that is not a 4-byte access at a register
offset. broiler answers instead, and counts each such access as a guest error:

- a 4-byte access at 0x0/0x4/0x8/0xC does what the table says;
- a write to MIN_FREQ/MAX_FREQ is ignored;
- any other size or offset (1/2/8 bytes, unaligned) reads all ones and its write is ignored.
An access that runs past the 16-byte block never reaches the device (the bus's straddle rule).
"""

from __future__ import annotations

from ...core.bus import Device, all_ones

SYNC_PIO_BASE = 0x6060
SYNC_MMIO_BASE = 0xD000_0000
SYNC_BLOCK_SIZE = 0x10

SLOT_NUM, SLOT_SEL, MIN_FREQ, MAX_FREQ = 0x0, 0x4, 0x8, 0xC
RESET_VALUES = {SLOT_NUM: 0x20, SLOT_SEL: 0x00, MIN_FREQ: 0x10, MAX_FREQ: 0x40}
READ_ONLY = frozenset({MIN_FREQ, MAX_FREQ})


class SyncRegisters(Device):
    """The 4-register block; ``name`` tells the PIO and MMIO instances apart in stats."""

    state_fields = ("regs:32",)

    def __init__(self, name: str = "sync-demo") -> None:
        super().__init__()
        self.name = name
        self.regs = dict(RESET_VALUES)  # saved whole: state_fields

    def read(self, offset: int, size: int) -> int:
        if size != 4 or offset not in self.regs:
            self.guest_error(f"{size}-byte read at +{offset:#x} (only 4-byte register reads are defined)")
            return all_ones(size)
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset not in self.regs:
            self.guest_error(f"{size}-byte write at +{offset:#x} ignored (only 4-byte register writes)")
        elif offset in READ_ONLY:
            self.guest_error(f"write to read-only register +{offset:#x} ignored")
        else:
            self.regs[offset] = value & 0xFFFFFFFF
