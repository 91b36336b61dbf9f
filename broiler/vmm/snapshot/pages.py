"""Guest RAM to the snapshot file and back: only pages that are not zero are written, so the file is sparse.

Finding them without reading all of RAM: /proc/self/pagemap says, 8 bytes per host page, whether a page of
the mapping is present or swapped. A page neither present nor swapped was never written in an anonymous
mapping (it reads as zero) and is skipped unread; in a mapping restored from a snapshot it still holds the
old file's page, so the old file's data extents (SEEK_DATA/SEEK_HOLE) are candidates too. Candidates are
compared with zeros a 2 MiB chunk at a time, then page by page inside a chunk that is not all zero.

Integrity without reading all of memory at restore: the state records a CRC-32 of every chunk written;
``verify_memory`` (``broiler run --restore FILE --verify``) reads them back and checks; a plain restore does
not, so that it maps the file lazily and starts at once (docs/snapshot.md).
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from ...core.memory import GuestMemory
from ...errors import SnapshotError
from ...kvm.abi import buffer_address

PAGE = 4096
CHUNK = 2 << 20
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_PAGE = bytes(PAGE)
# The top byte of a pagemap entry: bit 63 present, bit 62 swapped. 1 where either is set.
_TOUCHED = bytes(1 if b & 0xC0 else 0 for b in range(256))


def _data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of ``fd`` between ``start`` and ``end`` that hold data (not holes)."""
    extents: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # no data after pos
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data - start, hole - start))
        pos = hole
    return extents


def _candidate_chunks(pagemap: int, mm: mmap.mmap, extents: list[tuple[int, int]]) -> Iterator[int]:
    """Offsets of the chunks of ``mm`` that may hold a page that is not zero."""
    base_entry = buffer_address(mm) // PAGE * 8
    size = len(mm)
    ext = 0
    for offset in range(0, size, CHUNK):
        end = min(offset + CHUNK, size)
        while ext < len(extents) and extents[ext][1] <= offset:
            ext += 1
        if ext < len(extents) and extents[ext][0] < end:
            yield offset
            continue
        pages = (end - offset) // PAGE
        top = os.pread(pagemap, pages * 8, base_entry + offset // PAGE * 8)[7::8]
        if top.translate(_TOUCHED).count(0) != pages:
            yield offset


def _is_zero(view: memoryview, start: int, stop: int) -> bool:
    """Compared as bytes, not as memoryviews: memoryview == compares element by element (~20x slower
    on a zero page than the memcmp of two bytes objects, and zero pages are the ones compared whole)."""
    return view[start:stop].tobytes() == _ZERO_CHUNK[: stop - start]


def _nonzero_runs(view: memoryview, offset: int, end: int) -> Iterator[tuple[int, int]]:
    """[start, end) runs of pages that are not zero in ``view[offset:end]``."""
    run = -1
    for page in range(offset, end, PAGE):
        zero = view[page : page + PAGE].tobytes() == _ZERO_PAGE  # see _is_zero
        if not zero and run < 0:
            run = page
        elif zero and run >= 0:
            yield run, page
            run = -1
    if run >= 0:
        yield run, end


class _PageWriter:
    """Writes page-aligned runs of guest RAM on its own thread, with O_DIRECT where the file system takes it.

    Why direct: a buffered write first has to find 200 MiB of page cache, and on a host that hands out
    memory slowly (this project's nested KVM-PVM host) that alone took 0.6-0.7 s of a 0.9 s snapshot, then
    the fsync paid again; written directly the same data took 0.12-0.15 s and needs no data fsync. Guest RAM
    is page-aligned and so are the runs and their file offsets, as O_DIRECT requires. Where it is refused
    (tmpfs cannot open O_DIRECT; an odd block size rejects a write) the buffered descriptor is used.
    Why a thread: a direct write waits for the disk with the GIL released, so the caller compares and sums
    the next chunk meanwhile. The queue is bounded; its items are views of guest RAM, not copies."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct: int | None = None
        try:
            self.direct = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0))
        except OSError:
            self.direct = None
        self._queue: queue.Queue[tuple[memoryview, int] | None] = queue.Queue(maxsize=64)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._drain, name="broiler-snapshot-write", daemon=True)
        self._thread.start()

    def write(self, data: memoryview, pos: int) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((data, pos))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write_now(*item)
                except OSError as exc:
                    self._error = exc

    def _write_now(self, data: memoryview, pos: int) -> None:
        if self.direct is not None:
            try:
                _write_all(self.direct, data, pos)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        _write_all(self.fd, data, pos)

    def close(self) -> None:
        """Wait for every write; raises the first one's error."""
        self._queue.put(None)
        self._thread.join()
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None
        if self._error is not None:
            raise self._error


def _write_all(fd: int, data: memoryview, pos: int) -> None:
    while data:
        n = os.pwrite(fd, data, pos)
        data, pos = data[n:], pos + n


def _write_chunk(view: memoryview, out: _PageWriter, pos: int, offset: int, stop: int) -> list[int] | None:
    """Write the pages of one chunk that are not zero; [chunk index, CRC-32] or None if it is all zero."""
    if _is_zero(view, offset, stop):
        return None
    for run_start, run_end in _nonzero_runs(view, offset, stop):
        out.write(view[run_start:run_end], pos + run_start)
    return [offset // CHUNK, zlib.crc32(view[offset:stop])]


def _write_region(pagemap: int, memory: GuestMemory, index: int, out: _PageWriter, pos: int) -> list[list[int]]:
    start, end, mm = memory.regions[index]
    extents: list[tuple[int, int]] = []
    if memory.backing is not None:
        source = memory.backing.offsets[index]
        extents = _data_extents(memory.backing.fd, source, source + (end - start))
    offsets = list(_candidate_chunks(pagemap, mm, extents))
    view = memoryview(mm)
    try:
        # One thread, on purpose: with two workers, each pwrite/crc32 that released the GIL handed it to a
        # thread in the per-page loop and waited up to a switch interval to get it back (a GIL convoy):
        # 200 MiB took ~1 s with two workers and ~0.3 s with one.
        done = (_write_chunk(view, out, pos, o, min(o + CHUNK, end - start)) for o in offsets)
        return [chunk for chunk in done if chunk is not None]
    finally:
        view.release()


def write_memory(memory: GuestMemory, fd: int, mem_offset: int) -> tuple[int, list[dict[str, Any]]]:
    """Write every page of guest RAM that is not zero at its place after ``mem_offset``; (RAM length,
    the per-region records the state keeps: start, size, file offset, CRC-32 per written chunk)."""
    records: list[dict[str, Any]] = []
    pos = mem_offset
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    out = _PageWriter(fd)
    try:
        for i, (start, end, _) in enumerate(memory.regions):
            chunks = _write_region(pagemap, memory, i, out, pos)
            records.append({"start": start, "size": end - start, "file_offset": pos, "chunks": chunks})
            pos += end - start
    finally:
        out.close()
        os.close(pagemap)
    os.ftruncate(fd, pos)  # the holes at the end count too: restore maps every region's full length
    return pos - mem_offset, records


def verify_memory(fd: int, records: list[dict[str, Any]], path: str) -> None:
    """Read back every chunk the snapshot wrote and check its CRC-32 (``--verify``)."""
    for region in records:
        for index, crc in region["chunks"]:
            offset = index * CHUNK
            length = min(CHUNK, region["size"] - offset)
            data = os.pread(fd, length, region["file_offset"] + offset)
            if len(data) != length or zlib.crc32(data) != crc:
                raise SnapshotError(
                    f"{path}: guest memory at {region['start'] + offset:#x} is damaged (checksum mismatch)"
                )
