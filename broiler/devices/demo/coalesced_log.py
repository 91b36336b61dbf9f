"""A write-only log behind a coalesced MMIO zone (our own demo of the fourth IO path).

KVM appends the guest's writes into the coalesced ring without exiting; broiler replays them, in
order, on the next exit of any kind — at the latest before it handles a read, since a read always
exits. So the guest can stream N writes at the cost of ~0 exits, and a single read afterwards sees
all N applied.

Register map at 0xD0000080 (0x20 bytes, all inside the coalesced zone)::

    +0x00 DATA      write (1/2/4/8 bytes): append the value to the log
    +0x08 COUNT     read (4): values appended since reset
    +0x0C CHECKSUM  read (4): h = (h * 31 + value) mod 2^32 over the values, in order —
                    so a reordered or lost write changes it
    +0x10 RESET     write: empty the log
"""

from __future__ import annotations

from typing import Any

from ...core.bus import Device, all_ones
from ...core.state import check_keys, take_int, take_list

LOG_BASE = 0xD000_0080
LOG_SIZE = 0x20
DATA, COUNT, CHECKSUM, RESET = 0x00, 0x08, 0x0C, 0x10


def checksum(values: list[int]) -> int:
    h = 0
    for v in values:
        h = (h * 31 + v) & 0xFFFFFFFF
    return h


class CoalescedLog(Device):
    name = "coalesced-log"

    def __init__(self, keep: int = 4096) -> None:
        super().__init__()
        self.count = 0
        self.hash = 0
        self.keep = keep
        self.values: list[int] = []  # the most recent ``keep`` values, for tests and `broiler stat`

    def save_state(self) -> dict[str, Any]:
        return {"count": self.count, "hash": self.hash, "values": list(self.values)}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("count", "hash", "values"), self.name)
        values = [take_int({"value": v}, "value", self.name) for v in take_list(saved, "values", self.name, self.keep)]
        self.count, self.hash = take_int(saved, "count", self.name), take_int(saved, "hash", self.name, 32)
        self.values = values

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DATA:
            self.count += 1
            self.hash = (self.hash * 31 + value) & 0xFFFFFFFF
            self.values.append(value)
            if len(self.values) > self.keep:
                del self.values[: len(self.values) - self.keep]
        elif offset == RESET:
            self.count = self.hash = 0
            self.values.clear()
        else:
            self.guest_error(f"{size}-byte write at +{offset:#x} ignored")

    def read(self, offset: int, size: int) -> int:
        if size == 4 and offset == COUNT:
            return self.count & 0xFFFFFFFF
        if size == 4 and offset == CHECKSUM:
            return self.hash
        self.guest_error(f"{size}-byte read at +{offset:#x}")
        return all_ones(size)
