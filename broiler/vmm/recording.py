"""The `--record` file format: a header, then struct-packed events in zstandard-compressed chunks.

File::

    magic b"BROILREC" | u16 format version | u32 header length | header (JSON, UTF-8)
    chunk*: u32 compressed length | u32 raw length | zstd frame       (raw: a run of whole events)
    end:    u32 0 | u32 event count                                   (missing: the file is truncated)
    or cut: u32 0xFFFFFFFF | u32 event count      (--record-limit reached: the run went on, unrecorded)

Event: ``<B I Q I Q`` = kind, microseconds since the previous event, address, size, value (25 bytes before
compression); a DMA or ENTROPY event is followed by its ``size`` bytes of data. See docs/record-replay.md.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import zstandard

from ..errors import ConfigError

MAGIC = b"BROILREC"
FORMAT_VERSION = 4  # 2: clock reads (CLOCK events) and the cut marker; 3: S3 sleep and wake; 4: virtio
READABLE_VERSIONS = (1, 2, 3, 4)
_PREAMBLE = struct.Struct("<8sHI")
_CHUNK = struct.Struct("<II")
EVENT = struct.Struct("<BIQIQ")
CHUNK_RAW_BYTES = 1 << 20  # events are compressed a MiB at a time
HEADER_LIMIT = 1 << 20
MIN_CHUNK_RAW_BYTES = 4 << 10
CUT_MARK = 0xFFFF_FFFF  # in place of a chunk's compressed length: the recording stops here, cut by its limit
DEFAULT_LIMIT = 1 << 30
CHUNK_LIMIT = 64 << 20  # a chunk claiming more than this is corrupt (we never write one past ~1 MiB + 1 DMA)

# Causes: what the guest (or time) did to a device.
PIO_READ, PIO_WRITE, MMIO_READ, MMIO_WRITE, COALESCED_PIO, COALESCED_MMIO = 1, 2, 3, 4, 5, 6
KICK_PIO, KICK_MMIO, TIMER_FIRED = 7, 8, 9
# Effects: what a device did while handling a cause.
TIMER_SET, DMA_READ, DMA_WRITE, IRQ_LEVEL, IRQ_PULSE, MSI = 10, 11, 12, 13, 14, 15
# An input a device took while handling a cause: a clock reading (address = core/clock.py's source, value =
# what it read). Replay feeds it back rather than comparing it; a model that reads the clock a different
# number of times diverges there.
CLOCK = 16
# S3: a device asked for the sleep (an effect of the PM1a_CNT write); the machine woke (a cause, value 1 when
# the RTC alarm woke it, 0 for `broiler wakeup`), followed by what the wake's device resets did.
S3_SLEEP, S3_WAKE = 17, 18
# virtio-blk (format 4). DISK: what the device did to its disk image, an effect that is also an input (address =
# byte offset, size = length, value = ``disk_value``); a read's bytes are the DMA writes that follow it. Replay's
# disk answers from these, so it needs no image. VIRTIO_WORK: a cause, the device's IO thread serving its queue
# (value = the block device's index), like a timer firing.
DISK, VIRTIO_WORK = 19, 20
DISK_READ, DISK_WRITE, DISK_FLUSH, DISK_DISCARD, DISK_ZEROES = 0, 1, 2, 3, 4
DISK_OPS = ("read", "write", "flush", "discard", "write-zeroes")
DISK_FAILED = 0x80  # in a DISK value: the call failed, its result is the errno
# virtio-rng (format 4): the random bytes the device got from the host, an input (size = count, the bytes follow).
ENTROPY = 21
# virtio-console (format 4): CONSOLE_INPUT, a cause, host input fed to the device (the bytes follow);
# CONSOLE_DRAINED, a cause, its output pump made room (it takes more transmit buffers); CONSOLE_ROOM, an input,
# the room the pump had when the device asked (value), which decides how much of a transmit buffer it takes.
CONSOLE_INPUT, CONSOLE_DRAINED, CONSOLE_ROOM = 22, 23, 24
CAUSES = frozenset({*range(PIO_READ, TIMER_FIRED + 1), S3_WAKE, VIRTIO_WORK, CONSOLE_INPUT, CONSOLE_DRAINED})
DMA_KINDS = frozenset({DMA_READ, DMA_WRITE})
DATA_KINDS = DMA_KINDS | {ENTROPY, CONSOLE_INPUT}  # events followed by ``size`` bytes of data
KIND_NAMES = {
    PIO_READ: "pio read",
    PIO_WRITE: "pio write",
    MMIO_READ: "mmio read",
    MMIO_WRITE: "mmio write",
    COALESCED_PIO: "coalesced pio write",
    COALESCED_MMIO: "coalesced mmio write",
    KICK_PIO: "pio doorbell",
    KICK_MMIO: "mmio doorbell",
    TIMER_FIRED: "timer fired",
    TIMER_SET: "timer set",
    DMA_READ: "DMA read",
    DMA_WRITE: "DMA write",
    IRQ_LEVEL: "IRQ line",
    IRQ_PULSE: "IRQ pulse",
    MSI: "MSI",
    CLOCK: "clock read",
    S3_SLEEP: "S3 sleep requested",
    S3_WAKE: "S3 wake",
    DISK: "disk",
    VIRTIO_WORK: "virtio-blk IO thread",
    ENTROPY: "random bytes",
    CONSOLE_INPUT: "console input",
    CONSOLE_DRAINED: "console output drained",
    CONSOLE_ROOM: "console output room",
}


def disk_value(op: int, disk: int, result: int, *, failed: bool = False) -> int:
    """A DISK event's value: bits 0-6 the operation, 7 failed, 8-15 which disk, 16 and up the bytes moved
    (or the errno when failed)."""
    return op | (DISK_FAILED if failed else 0) | (disk & 0xFF) << 8 | result << 16


def split_disk_value(value: int) -> tuple[int, int, int, bool]:
    """(operation, disk, result, failed) of a DISK event's value."""
    return value & 0x7F, value >> 8 & 0xFF, value >> 16, bool(value & DISK_FAILED)


class Event(NamedTuple):
    kind: int
    t_us: int  # since the start of the recording
    addr: int
    size: int
    value: int
    data: bytes = b""

    def describe(self) -> str:
        name = KIND_NAMES.get(self.kind, f"kind {self.kind}")
        if self.kind in DATA_KINDS:  # the bytes too: two DMAs to one place may differ only in them
            shown = self.data[:8].hex() + ("..." if len(self.data) > 8 else "")
            whole = f" crc32 {zlib.crc32(self.data):08x}" if len(self.data) > 8 else ""
            return f"{name} {self.size} bytes at {self.addr:#x} ({shown}{whole})"
        if self.kind in (TIMER_SET, TIMER_FIRED):
            return f"{name} #{self.value}"
        if self.kind in (IRQ_LEVEL, IRQ_PULSE):
            return f"{name} GSI {self.addr}" + (f" level {self.value}" if self.kind == IRQ_LEVEL else "")
        if self.kind == S3_WAKE:
            return f"S3 wake by {'the RTC alarm' if self.value else 'command'}"
        if self.kind == S3_SLEEP:
            return name
        if self.kind == CLOCK:
            return f"clock read ({'UTC seconds' if self.addr else 'ns'}) {self.value}"
        if self.kind == DISK:
            op, disk, result, failed = split_disk_value(self.value)
            name = DISK_OPS[op] if op < len(DISK_OPS) else f"op {op}"
            outcome = f"failed (errno {result})" if failed else f"-> {result}"
            return f"disk{disk} {name} {self.size} bytes at offset {self.addr:#x} {outcome}"
        if self.kind == CONSOLE_DRAINED:
            return name
        if self.kind == CONSOLE_ROOM:
            return f"{name} {self.value}"
        if self.kind == VIRTIO_WORK:
            return f"{name} of virtio-blk{self.value}"
        if self.kind == MSI:
            return f"MSI {self.addr:#x} data {self.value:#x}"
        return f"{name} {self.addr:#x}/{self.size} value {self.value:#x}"


def pack(kind: int, dt_us: int, addr: int, size: int, value: int) -> bytes:
    return EVENT.pack(kind, min(dt_us, 0xFFFF_FFFF), addr & (2**64 - 1), size, value & (2**64 - 1))


class RecordingWriter:
    """Appends packed events; a writer thread compresses and writes each full chunk (never a vCPU's or the
    event loop's thread). ``close`` writes the last chunk and the end marker.

    ``limit`` bounds the file's size in bytes: the chunk that would pass it is not written; the cut marker
    goes in its place, everything after is dropped, and ``on_cut`` is called once (on the writer thread).
    Chunks are made small enough (a sixteenth of the limit) that a cut file keeps most of what fits."""

    def __init__(
        self,
        out: IO[bytes],
        header: dict[str, Any],
        limit: int | None = None,
        on_cut: Callable[[int], None] | None = None,
    ) -> None:
        blob = json.dumps(header, sort_keys=True).encode()
        out.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(blob)) + blob)
        self.out = out
        self.events = 0  # appended
        self.written_events = 0  # in chunks on disk
        self.file_bytes = _PREAMBLE.size + len(blob)
        self.raw_bytes = 0
        self.limit = limit
        self.cut = False
        self._on_cut = on_cut
        self._chunk_bytes = (
            CHUNK_RAW_BYTES if limit is None else max(MIN_CHUNK_RAW_BYTES, min(CHUNK_RAW_BYTES, limit // 16))
        )
        self._buffer = bytearray()
        self._buffer_events = 0
        self._cutting = False  # cut_now was called: the writer thread writes the cut marker next
        # Bounded: a slow disk slows the VM rather than queueing without end.
        self._chunks: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._write_chunks, name="broiler-record", daemon=True)
        self._thread.start()

    @property
    def chunk_bytes(self) -> int:
        return self._chunk_bytes

    def cut_now(self) -> None:
        """End the recording here with the cut marker, as if the limit were reached (a cause's own data
        would not fit under it); nothing appended after this is kept."""
        if not self.cut and not self._cutting:
            self._cutting = True
            if self._buffer:
                self._flush()
            self._chunks.put((b"", -1))

    def append(self, data: bytes, events: int) -> None:
        """Whole events only (callers hold their own lock, so events from different threads never mix)."""
        if self.cut or self._cutting:
            return  # past the limit: nothing more is kept, not even in memory
        self._buffer += data
        self._buffer_events += events
        self.events += events
        self.raw_bytes += len(data)
        if len(self._buffer) >= self._chunk_bytes:
            self._flush()

    def _flush(self) -> None:
        self._chunks.put((bytes(self._buffer), self._buffer_events))
        self._buffer.clear()
        self._buffer_events = 0

    def _write_chunks(self) -> None:
        compressor = zstandard.ZstdCompressor(level=3)
        while (item := self._chunks.get()) is not None:
            raw, events = item
            if self.cut:
                continue
            packed = compressor.compress(raw)
            size = _CHUNK.size + len(packed)
            over = self.limit is not None and self.file_bytes + size + _CHUNK.size > self.limit
            if events < 0 or over:
                self.cut = True
                self.out.write(_CHUNK.pack(CUT_MARK, self.written_events))
                self.file_bytes += _CHUNK.size
                if self._on_cut is not None:
                    self._on_cut(self.written_events)
                continue
            self.out.write(_CHUNK.pack(len(packed), len(raw)) + packed)
            self.file_bytes += size
            self.written_events += events

    def close(self) -> None:
        if self._buffer and not self._cutting:
            self._flush()
        self._chunks.put(None)
        self._thread.join()
        if not self.cut:  # (cut_now's marker is written by the thread, which has ended)
            self.out.write(_CHUNK.pack(0, self.written_events))
            self.file_bytes += _CHUNK.size
        self.out.flush()


@dataclass
class Ending:
    """How the events of a recording ended, once ``read_events`` has read them all."""

    cut_by_limit: bool = False


def _foreign(path: str, why: str) -> ConfigError:
    return ConfigError(f"{path!r} is not a broiler recording ({why})")


def _truncated(path: str, why: str) -> ConfigError:
    return ConfigError(f"recording {path!r} is truncated or corrupt ({why})")


def read_header(f: IO[bytes], path: str) -> dict[str, Any]:
    preamble = f.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size or not preamble.startswith(MAGIC):
        raise _foreign(path, "no BROILREC magic")
    _, version, length = _PREAMBLE.unpack(preamble)
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise ConfigError(f"recording {path!r} has format version {version}; this broiler reads {readable}")
    if length > HEADER_LIMIT:
        raise _truncated(path, f"header of {length} bytes")
    blob = f.read(length)
    try:
        header = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise _truncated(path, "header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
        raise _truncated(path, "header has no machine config")
    return header


def read_events(f: IO[bytes], path: str, ending: Ending | None = None) -> Iterator[Event]:
    """Every event after the header, in order; raises ConfigError on a truncated or corrupt file. A file cut
    by its --record-limit is not an error: ``ending.cut_by_limit`` says so once every event is read."""
    decompressor = zstandard.ZstdDecompressor()
    t_us = count = 0
    while True:
        head = f.read(_CHUNK.size)
        if len(head) < _CHUNK.size:
            raise _truncated(path, f"ends after {count} events without its end marker")
        packed_len, raw_len = _CHUNK.unpack(head)
        if packed_len in (0, CUT_MARK):
            if raw_len != count:
                raise _truncated(path, f"end marker says {raw_len} events, found {count}")
            if ending is not None:
                ending.cut_by_limit = packed_len == CUT_MARK
            return
        if packed_len > CHUNK_LIMIT or raw_len > CHUNK_LIMIT:
            raise _truncated(path, "chunk too large")
        packed = f.read(packed_len)
        try:
            raw = decompressor.decompress(packed, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise _truncated(path, f"chunk after event {count}: {exc}") from None
        if len(raw) != raw_len:
            raise _truncated(path, f"chunk after event {count} has the wrong length")
        for event in _unpack(raw, path, count):
            t_us += event.t_us
            count += 1
            yield event._replace(t_us=t_us)


def _unpack(raw: bytes, path: str, count: int) -> Iterator[Event]:
    pos = 0
    while pos < len(raw):
        if pos + EVENT.size > len(raw):
            raise _truncated(path, f"event {count} is cut short")
        kind, dt, addr, size, value = EVENT.unpack_from(raw, pos)
        pos += EVENT.size
        data = b""
        if kind in DATA_KINDS:
            data = raw[pos : pos + size]
            if len(data) != size:
                raise _truncated(path, f"event {count}'s data is cut short")
            pos += size
        elif kind not in KIND_NAMES:
            raise _truncated(path, f"event {count} has unknown kind {kind}")
        count += 1
        yield Event(kind, dt, addr, size, value, data)
