"""A driver-side helper for virtio unit tests: lays out split rings in guest RAM and adds chains the
way a guest driver would, then reads the used ring back. No KVM."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from broiler.core.memory import GuestMemory, MemoryMap, MiB
from broiler.devices.virtio.queue import Virtqueue
from broiler.devices.virtio.spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

RAM = 4 * MiB
DESC_AT = 0x10000
AVAIL_AT = 0x20000
USED_AT = 0x30000
DATA_AT = 0x100000  # buffers are handed out from here up
INDIRECT_AT = 0x80000


def guest_ram() -> GuestMemory:
    return GuestMemory(MemoryMap(RAM))


@dataclass
class Buf:
    """One buffer of a chain: ``data`` for a readable one, or ``length`` bytes of writable space."""

    data: bytes = b""
    length: int = 0
    writable: bool = False


class Driver:
    """Owns one queue's rings in guest RAM, like a guest driver."""

    def __init__(
        self, memory: GuestMemory, queue: Virtqueue, size: int = 8, *, ring_offset: int = 0, data_at: int = DATA_AT
    ) -> None:
        """``ring_offset`` and ``data_at`` let a second queue of the same device live beside the first."""
        self.mem = memory
        self.queue = queue
        self.size = size
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.next_data = data_at
        self.desc_at, self.avail_at, self.used_at = DESC_AT + ring_offset, AVAIL_AT + ring_offset, USED_AT + ring_offset
        queue.size = size
        queue.desc, queue.avail, queue.used = self.desc_at, self.avail_at, self.used_at

    def alloc(self, length: int) -> int:
        addr = self.next_data
        self.next_data += (length + 15) & ~15
        return addr

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, bufs: list[Buf], *, indirect: bool = False) -> tuple[int, list[int]]:
        """Make one chain available; returns (head, guest address of each buffer)."""
        addrs = []
        table = INDIRECT_AT if indirect else self.desc_at
        first = 0 if indirect else self.next_desc
        for i, buf in enumerate(bufs):
            length = buf.length if buf.writable else len(buf.data)
            addr = self.alloc(length)
            if not buf.writable:
                self.mem.write(addr, buf.data)
            addrs.append(addr)
            index = first + i if indirect else (first + i) % self.size
            nxt = index + 1 if indirect else (first + i + 1) % self.size
            flags = (DESC_F_WRITE if buf.writable else 0) | (DESC_F_NEXT if i < len(bufs) - 1 else 0)
            self.write_desc(table, index, addr, length, flags, nxt)
        if indirect:
            head = self.next_desc
            self.write_desc(self.desc_at, head, INDIRECT_AT, 16 * len(bufs), DESC_F_INDIRECT, 0)
            self.next_desc = (self.next_desc + 1) % self.size
        else:
            head = first
            self.next_desc = (self.next_desc + len(bufs)) % self.size
        self.publish(head)
        return head, addrs

    def publish(self, head: int) -> None:
        self.mem.write_int(self.avail_at + 4 + 2 * (self.avail_idx % self.size), 2, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_int(self.avail_at + 2, 2, self.avail_idx)

    def used(self) -> list[tuple[int, int]]:
        """New used elements (id, len) since the last call."""
        idx = self.mem.read_int(self.used_at + 2, 2)
        out = []
        while self.used_seen != idx:
            slot = self.used_at + 4 + 8 * (self.used_seen % self.size)
            out.append(struct.unpack("<II", self.mem.read(slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def set_used_event(self, value: int) -> None:
        self.mem.write_int(self.avail_at + 4 + 2 * self.size, 2, value)

    def avail_event(self) -> int:
        return self.mem.read_int(self.used_at + 4 + 8 * self.size, 2)
