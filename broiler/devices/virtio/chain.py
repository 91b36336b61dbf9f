"""A descriptor chain as the device sees it: guest buffers, readable ones first, then writable ones.

Each ``Segment`` has already been checked to lie wholly inside guest RAM (``queue.py`` does that while
walking the chain), so the helpers here only slice. They hand out ``memoryview`` slices of guest RAM,
which lets a block request go straight between the disk file and the guest's pages (``os.preadv`` /
``os.pwritev``) without a host-side copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Memory(Protocol):
    """What a virtqueue needs from guest RAM (``core.memory.GuestMemory`` is one). Every method raises
    ``GuestMemoryError`` for a range that is not wholly inside one RAM region."""

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, size: int) -> memoryview: ...

    def contains(self, gpa: int, size: int) -> bool: ...

    def note(self, rw: str, gpa: int, size: int) -> None:
        """Bytes moved through a view ("r" before reading them, "w" after writing): DMA while recorded."""
        ...


@dataclass(frozen=True, slots=True)
class Segment:
    """One guest buffer: ``length`` bytes at guest-physical ``addr``."""

    addr: int
    length: int


def slice_segments(segments: Sequence[Segment], start: int, length: int) -> list[Segment]:
    """The part of the concatenated ``segments`` covering bytes [start, start + length), clipped at the end."""
    out: list[Segment] = []
    pos = 0
    end = start + length
    for seg in segments:
        lo, hi = max(start, pos), min(end, pos + seg.length)
        if lo < hi:
            out.append(Segment(seg.addr + lo - pos, hi - lo))
        pos += seg.length
        if pos >= end:
            break
    return out


@dataclass(slots=True)
class Chain:
    """A popped chain: its head index (what goes back in the used ring) and its buffers."""

    head: int
    readable: list[Segment] = field(default_factory=list)
    writable: list[Segment] = field(default_factory=list)

    @property
    def read_length(self) -> int:
        return sum(s.length for s in self.readable)

    @property
    def write_length(self) -> int:
        return sum(s.length for s in self.writable)

    def read(self, memory: Memory, start: int, length: int) -> bytes:
        """Up to ``length`` readable bytes from offset ``start`` (fewer if the chain is shorter).
        Callers pass small, device-chosen lengths (headers, segment lists), never a guest's count."""
        return b"".join(memory.read(s.addr, s.length) for s in slice_segments(self.readable, start, length))

    def write(self, memory: Memory, start: int, data: bytes | memoryview) -> int:
        """Scatter ``data`` into the writable buffers from offset ``start``; returns the bytes written."""
        done = 0
        for seg in slice_segments(self.writable, start, len(data)):
            memory.write(seg.addr, data[done : done + seg.length])
            done += seg.length
        return done

    def readable_views(self, memory: Memory, start: int, length: int) -> list[memoryview]:
        return [memory.view(s.addr, s.length) for s in slice_segments(self.readable, start, length)]

    def writable_views(self, memory: Memory, start: int, length: int) -> list[memoryview]:
        return [memory.view(s.addr, s.length) for s in slice_segments(self.writable, start, length)]

    def note_readable(self, memory: Memory, start: int, length: int) -> None:
        """Before reading readable bytes through views: say which (recorded as DMA reads under --record)."""
        for s in slice_segments(self.readable, start, length):
            memory.note("r", s.addr, s.length)

    def note_written(self, memory: Memory, start: int, length: int) -> None:
        """After writing writable bytes through views: say which (recorded as DMA writes under --record)."""
        for s in slice_segments(self.writable, start, length):
            memory.note("w", s.addr, s.length)
