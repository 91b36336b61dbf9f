"""The snapshot file (docs/snapshot.md): a checksummed prefix page, guest RAM (sparse), then the state as JSON.

Layout, every offset page-aligned::

    [0, 4096)                      prefix: magic, format version, where the state and memory are, CRC-32s
    [mem_offset, + mem_len)        guest RAM regions back to back, at their offset in RAM; zero pages are
                                   holes, so a restore can mmap each region MAP_PRIVATE straight from here
    [state_offset, + state_len)    the state: JSON (UTF-8); ``bytes`` values are {"$bytes": base64} (jsonstate.py)

The prefix is written last, so a file cut short while being written has no valid prefix. The whole file is
written to a temporary name in the destination directory, fsync'd, then renamed over the destination.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ...errors import SnapshotError
from . import jsonstate

MAGIC = b"BROILSNP"
FORMAT_VERSION = 1
PAGE = 4096
PREFIX_SIZE = PAGE
# magic, version, prefix size, mem offset, mem len, state offset, state len, state CRC-32; then the CRC-32
# of those bytes.
_PREFIX = struct.Struct("<8sIIQQQQI")
_PREFIX_CRC = struct.Struct("<I")
MAX_STATE = 256 << 20  # a state bigger than this is not one broiler wrote: refuse before reading it


@dataclass(frozen=True)
class Layout:
    mem_offset: int
    mem_len: int
    state_offset: int
    state_len: int


def encode_state(state: dict[str, Any]) -> bytes:
    """The state as JSON, bytes values encoded by jsonstate.py (the one encoding the device side uses too)."""
    try:
        return jsonstate.dumps(state).encode()
    except TypeError as exc:
        raise SnapshotError(f"cannot save the VM's state: {exc}") from None


def pack_prefix(layout: Layout, state_crc: int, version: int = FORMAT_VERSION) -> bytes:
    head = _PREFIX.pack(
        MAGIC, version, PREFIX_SIZE, layout.mem_offset, layout.mem_len, layout.state_offset,
        layout.state_len, state_crc,
    )  # fmt: skip
    return (head + _PREFIX_CRC.pack(zlib.crc32(head))).ljust(PREFIX_SIZE, b"\0")


def unpack_prefix(data: bytes, path: str) -> tuple[Layout, int]:
    """(layout, state CRC-32) from the prefix page; SnapshotError with one line for anything else."""
    if len(data) < _PREFIX.size + _PREFIX_CRC.size:
        raise SnapshotError(f"{path}: not a broiler snapshot (too short)")
    magic, version, prefix_size, mem_off, mem_len, st_off, st_len, st_crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{path}: not a broiler snapshot (no {MAGIC.decode()} magic)")
    (crc,) = _PREFIX_CRC.unpack_from(data, _PREFIX.size)
    if crc != zlib.crc32(data[: _PREFIX.size]):
        raise SnapshotError(f"{path}: the snapshot's header is damaged (checksum mismatch)")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format version {version}, this broiler reads version {FORMAT_VERSION} only"
        )
    if prefix_size != PREFIX_SIZE or mem_off % PAGE or st_off % PAGE or st_len > MAX_STATE:
        raise SnapshotError(f"{path}: the snapshot's header is inconsistent")
    return Layout(mem_off, mem_len, st_off, st_len), st_crc


def read_state(f: BinaryIO, path: str) -> tuple[Layout, dict[str, Any]]:
    """Check the prefix, the file's length and the state's CRC; the decoded state."""
    layout, crc = unpack_prefix(f.read(PREFIX_SIZE), path)
    size = os.fstat(f.fileno()).st_size
    if size < layout.state_offset + layout.state_len or size < layout.mem_offset + layout.mem_len:
        raise SnapshotError(
            f"{path}: the snapshot is truncated ({size} bytes of {layout.state_offset + layout.state_len})"
        )
    f.seek(layout.state_offset)
    raw = f.read(layout.state_len)
    if zlib.crc32(raw) != crc:
        raise SnapshotError(f"{path}: the snapshot's state is damaged (checksum mismatch)")
    try:
        state = jsonstate.loads(raw)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: the snapshot's state does not parse: {exc}") from None
    if not isinstance(state, dict):
        raise SnapshotError(f"{path}: the snapshot's state is not an object")
    return layout, state


def write_atomically(path: str, fill: Callable[[int], Layout | None], state: Callable[[], dict[str, Any]]) -> int:
    """Write the file through ``fill(fd)`` (memory, returns the layout) and ``state()``; returns bytes on
    disk. The temporary file lives beside ``path`` so the rename cannot cross file systems."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path!r}: {exc.strerror}") from None
    try:
        layout = fill(fd)
        assert layout is not None
        raw = encode_state(state())
        layout = Layout(layout.mem_offset, layout.mem_len, layout.state_offset, len(raw))
        os.pwrite(fd, raw, layout.state_offset)
        os.ftruncate(fd, layout.state_offset + len(raw))
        os.fsync(fd)  # the data before the prefix: a crash never leaves a valid prefix over missing data
        os.pwrite(fd, pack_prefix(layout, zlib.crc32(raw)), 0)
        os.fsync(fd)
        blocks = os.fstat(fd).st_blocks * 512
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
        _fsync_directory(directory)  # the rename itself survives a crash
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path!r}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return blocks


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
