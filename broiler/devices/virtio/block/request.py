"""One virtio-blk request (virtio 1.2 §5.2.6), executed against a ``DiskImage``.

A request chain is a 16-byte header {le32 type, le32 reserved, le64 sector} in the readable buffers,
then the data (readable for OUT, writable for IN), then a one-byte status that is the *last* writable
byte. The header and data may be split across buffers in any way; nothing here assumes a framing.

Outcomes: OK; IOERR for IO errors, a range past the end of the disk, a data length that is not a
multiple of 512, a write of any kind to a read-only disk, or a malformed DISCARD/WRITE_ZEROES list;
UNSUPP for a type we do not know or did not offer. A chain with no writable byte cannot carry a
status: it is returned with used length 0 and counted as an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ....errors import GuestMemoryError
from ..chain import Chain, Memory
from .disk import SECTOR, DiskImage

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
WRITE_ZEROES_UNMAP = 1

_HEADER = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags


@dataclass(frozen=True, slots=True)
class Limits:
    """What the device offered: the DISCARD/WRITE_ZEROES limits of its config space (0 = not offered)."""

    discard_sectors: int = 0
    discard_segments: int = 0
    zeroes_sectors: int = 0
    zeroes_segments: int = 0


@dataclass(slots=True)
class Result:
    status: int
    used_len: int = 0  # bytes written into the chain, status byte included
    bytes_read: int = 0  # disk -> guest
    bytes_written: int = 0  # guest -> disk


def execute(chain: Chain, memory: Memory, disk: DiskImage, serial: bytes, limits: Limits) -> Result:
    """Run the request in ``chain`` and write its status byte; the caller pushes ``used_len``."""
    status_at = chain.write_length - 1
    if status_at < 0:
        return Result(S_IOERR, 0)
    try:
        result = _dispatch(chain, memory, disk, serial, limits, status_at)
    except (OSError, GuestMemoryError):
        result = Result(S_IOERR)
    chain.write(memory, status_at, bytes([result.status]))
    result.used_len += 1
    return result


def _dispatch(chain: Chain, memory: Memory, disk: DiskImage, serial: bytes, limits: Limits, data_in: int) -> Result:
    header = chain.read(memory, 0, _HEADER.size)
    if len(header) < _HEADER.size:
        return Result(S_IOERR)
    kind, _, sector = _HEADER.unpack(header)
    data_out = chain.read_length - _HEADER.size
    if kind == T_IN:
        return _read(chain, memory, disk, sector, data_in)
    if kind == T_OUT:
        return _write(chain, memory, disk, sector, data_out)
    if kind == T_FLUSH:
        disk.flush()
        return Result(S_OK)
    if kind == T_GET_ID:
        n = chain.write(memory, 0, serial[: min(ID_BYTES, data_in)])
        return Result(S_OK, n)
    if kind in (T_DISCARD, T_WRITE_ZEROES):
        return _ranges(chain, memory, disk, kind, limits, data_out)
    return Result(S_UNSUPP)


def _read(chain: Chain, memory: Memory, disk: DiskImage, sector: int, length: int) -> Result:
    offset = sector * SECTOR
    if length % SECTOR or not disk.in_range(offset, length):
        return Result(S_IOERR)
    n = disk.readv(chain.writable_views(memory, 0, length), offset)
    chain.note_written(memory, 0, n)
    return Result(S_OK if n == length else S_IOERR, n, bytes_read=n)


def _write(chain: Chain, memory: Memory, disk: DiskImage, sector: int, length: int) -> Result:
    offset = sector * SECTOR
    if disk.read_only or length % SECTOR or not disk.in_range(offset, length):
        return Result(S_IOERR)
    chain.note_readable(memory, _HEADER.size, length)
    n = disk.writev(chain.readable_views(memory, _HEADER.size, length), offset)
    return Result(S_OK if n == length else S_IOERR, bytes_written=n)


def _ranges(chain: Chain, memory: Memory, disk: DiskImage, kind: int, limits: Limits, length: int) -> Result:
    discard = kind == T_DISCARD
    max_sectors = limits.discard_sectors if discard else limits.zeroes_sectors
    max_segments = limits.discard_segments if discard else limits.zeroes_segments
    if not max_segments:
        return Result(S_UNSUPP)  # not offered
    if disk.read_only or length <= 0 or length % _SEGMENT.size or length // _SEGMENT.size > max_segments:
        return Result(S_IOERR)
    raw = chain.read(memory, _HEADER.size, length)  # at most max_segments * 16 bytes
    segments = [_SEGMENT.unpack_from(raw, i) for i in range(0, len(raw), _SEGMENT.size)]
    allowed_flags = 0 if discard else WRITE_ZEROES_UNMAP  # unmap on DISCARD is UNSUPP (§5.2.6.2)
    for sector, count, flags in segments:
        if flags & ~allowed_flags:
            return Result(S_UNSUPP)
        if count > max_sectors or not disk.in_range(sector * SECTOR, count * SECTOR):
            return Result(S_IOERR)
    for sector, count, flags in segments:
        if discard or flags & WRITE_ZEROES_UNMAP:
            disk.discard(sector * SECTOR, count * SECTOR)
        else:
            disk.write_zeroes(sector * SECTOR, count * SECTOR)
    return Result(S_OK)
