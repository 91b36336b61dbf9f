"""virtio-blk against a temporary image file: the bytes in the file, the status bytes and used
lengths the guest sees, read-only disks, ranges past the end, DISCARD/WRITE_ZEROES, the IO worker,
and the one-line errors for bad disks. No KVM."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest

from broiler.devices.virtio.block import DiskImage, VirtioBlock
from broiler.devices.virtio.block.device import F_DISCARD, F_FLUSH, F_RO, F_WRITE_ZEROES, SEG_MAX
from broiler.devices.virtio.block.request import (
    S_IOERR,
    S_OK,
    S_UNSUPP,
    T_DISCARD,
    T_FLUSH,
    T_GET_ID,
    T_IN,
    T_OUT,
    T_WRITE_ZEROES,
)
from broiler.devices.virtio.queue import Virtqueue
from broiler.devices.virtio.spec import F_RING_INDIRECT_DESC, F_VERSION_1, bit
from broiler.errors import ConfigError
from tests.unit.virtio_driver import Buf, Driver, guest_ram

SECTORS = 64


class Completions:
    """The transport side: counts interrupts and wakes the test when one arrives."""

    def __init__(self) -> None:
        self.used = threading.Semaphore(0)
        self.interrupts = 0
        self.reset_reasons: list[str] = []

    def queue_used(self, queue_index: int) -> None:
        self.interrupts += 1
        self.used.release()

    def needs_reset(self, reason: str) -> None:
        self.reset_reasons.append(reason)
        self.used.release()


def image(tmp_path: Path, content: bytes | None = None) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(content if content is not None else bytes(range(256)) * (SECTORS * 2))
    return path


class Rig:
    def __init__(self, path: Path, *, read_only: bool = False, serial: str | None = "broiler-disk-0") -> None:
        self.mem = guest_ram()
        self.dev = VirtioBlock(DiskImage(str(path), read_only=read_only), serial=serial)
        self.q = Virtqueue(256)
        self.drv = Driver(self.mem, self.q, 16)
        self.q.activate(self.mem, event_idx=False, indirect=True)
        self.done = Completions()
        features = self.dev.device_features() | bit(F_VERSION_1) | bit(F_RING_INDIRECT_DESC)
        self.dev.activate(self.mem, [self.q], self.done, features)

    def request(self, kind: int, sector: int, *bufs: Buf, indirect: bool = False) -> tuple[int, int, list[int]]:
        """Submit, kick, wait for the worker; returns (status, used len, buffer addresses)."""
        header = Buf(struct.pack("<IIQ", kind, 0, sector))
        head, addrs = self.drv.add([header, *bufs, Buf(length=1, writable=True)], indirect=indirect)
        self.dev.notify(0)
        assert self.done.used.acquire(timeout=30), "the IO worker never completed the request"
        used = self.drv.used()
        assert [u[0] for u in used] == [head]
        return self.mem.read(addrs[-1], 1)[0], used[0][1], addrs

    def close(self) -> None:
        self.dev.close()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(image(tmp_path))
    yield r
    r.close()


def test_config_and_features(rig: Rig) -> None:
    cfg = rig.dev.config()
    assert struct.unpack_from("<Q", cfg, 0)[0] == SECTORS
    assert struct.unpack_from("<I", cfg, 0x0C)[0] == SEG_MAX
    assert struct.unpack_from("<I", cfg, 0x14)[0] == 512
    feats = rig.dev.device_features()
    assert feats & bit(F_FLUSH) and not feats & bit(F_RO)
    if rig.dev.disk.can_punch:
        assert feats & bit(F_DISCARD) and feats & bit(F_WRITE_ZEROES)
        assert struct.unpack_from("<II", cfg, 0x24) == (0x3F_FFFF, 16)


def test_read_goes_straight_into_guest_buffers(rig: Rig, tmp_path: Path) -> None:
    status, used_len, addrs = rig.request(T_IN, 1, Buf(length=300, writable=True), Buf(length=724, writable=True))
    assert status == S_OK and used_len == 1024 + 1
    file = (tmp_path / "disk.img").read_bytes()
    assert rig.mem.read(addrs[1], 300) + rig.mem.read(addrs[2], 724) == file[512 : 512 + 1024]
    assert rig.dev.stats.bytes_read == 1024


def test_write_reaches_the_file_before_completion(rig: Rig, tmp_path: Path) -> None:
    data = b"\xab" * 512 + b"\xcd" * 512
    status, used_len, _ = rig.request(T_OUT, 3, Buf(data[:100]), Buf(data[100:]), indirect=True)
    assert status == S_OK and used_len == 1
    file = (tmp_path / "disk.img").read_bytes()  # a completed write is in the file
    assert file[3 * 512 : 5 * 512] == data and file[:512] == bytes(range(256)) * 2
    assert rig.dev.stats.bytes_written == 1024 and rig.done.interrupts == 1


def test_flush_and_get_id(rig: Rig) -> None:
    assert rig.request(T_FLUSH, 0)[0] == S_OK
    status, used_len, addrs = rig.request(T_GET_ID, 0, Buf(length=20, writable=True))
    assert status == S_OK and used_len == 21
    assert rig.mem.read(addrs[1], 20) == b"broiler-disk-0".ljust(20, b"\0")


@pytest.mark.parametrize(
    "kind, sector, bufs",
    [
        (T_IN, SECTORS, [Buf(length=512, writable=True)]),  # past the end
        (T_IN, SECTORS - 1, [Buf(length=1024, writable=True)]),  # crosses the end
        (T_IN, 0, [Buf(length=100, writable=True)]),  # not a multiple of 512
        (T_OUT, 2**60, [Buf(b"x" * 512)]),  # sector * 512 overflows nothing, but is past the end
        (T_OUT, 0, [Buf(b"x" * 100)]),
    ],
)
def test_bad_ranges_are_ioerr_and_change_nothing(rig: Rig, tmp_path: Path, kind: int, sector: int, bufs) -> None:
    before = (tmp_path / "disk.img").read_bytes()
    assert rig.request(kind, sector, *bufs)[0] == S_IOERR
    assert (tmp_path / "disk.img").read_bytes() == before
    assert rig.dev.stats.errors == 1


def test_unknown_type_is_unsupp(rig: Rig) -> None:
    assert rig.request(99, 0)[0] == S_UNSUPP


def test_short_header_is_ioerr(rig: Rig) -> None:
    head, addrs = rig.drv.add([Buf(b"\0" * 8), Buf(length=1, writable=True)])
    rig.dev.notify(0)
    assert rig.done.used.acquire(timeout=30)
    assert rig.drv.used() == [(head, 1)] and rig.mem.read(addrs[1], 1)[0] == S_IOERR


def test_chain_without_status_byte_gets_len_zero(rig: Rig) -> None:
    head, _ = rig.drv.add([Buf(struct.pack("<IIQ", T_FLUSH, 0, 0))])
    rig.dev.notify(0)
    assert rig.done.used.acquire(timeout=30)
    assert rig.drv.used() == [(head, 0)] and rig.dev.stats.errors == 1


def test_read_only_disk_refuses_every_write(tmp_path: Path) -> None:
    path = image(tmp_path)
    before = path.read_bytes()
    r = Rig(path, read_only=True)
    try:
        assert r.dev.device_features() & bit(F_RO)
        assert not r.dev.device_features() & bit(F_DISCARD)
        assert r.request(T_OUT, 0, Buf(b"\xff" * 512))[0] == S_IOERR
        seg = struct.pack("<QII", 0, 8, 0)
        assert r.request(T_DISCARD, 0, Buf(seg))[0] in (S_IOERR, S_UNSUPP)
        assert r.request(T_WRITE_ZEROES, 0, Buf(seg))[0] in (S_IOERR, S_UNSUPP)
        assert r.request(T_IN, 0, Buf(length=512, writable=True))[0] == S_OK
    finally:
        r.close()
    assert path.read_bytes() == before


def test_discard_and_write_zeroes(rig: Rig, tmp_path: Path) -> None:
    if not rig.dev.disk.can_punch:
        pytest.skip("this file system cannot punch holes: DISCARD/WRITE_ZEROES are not offered")
    assert rig.request(T_WRITE_ZEROES, 0, Buf(struct.pack("<QII", 2, 2, 0)))[0] == S_OK
    assert rig.request(T_DISCARD, 0, Buf(struct.pack("<QII", 8, 1, 0)))[0] == S_OK
    file = (tmp_path / "disk.img").read_bytes()
    assert file[2 * 512 : 4 * 512] == bytes(1024) and file[8 * 512 : 9 * 512] == bytes(512)
    assert file[4 * 512 : 5 * 512] == bytes(range(256)) * 2
    assert len(file) == SECTORS * 512
    # DISCARD with the unmap flag is UNSUPP; a list past the end, or 17 segments, is IOERR.
    assert rig.request(T_DISCARD, 0, Buf(struct.pack("<QII", 0, 1, 1)))[0] == S_UNSUPP
    assert rig.request(T_DISCARD, 0, Buf(struct.pack("<QII", SECTORS, 1, 0)))[0] == S_IOERR
    assert rig.request(T_DISCARD, 0, Buf(struct.pack("<QII", 0, 1, 0) * 17))[0] == S_IOERR


def test_reset_stops_the_worker(rig: Rig) -> None:
    assert rig.request(T_FLUSH, 0)[0] == S_OK
    worker = rig.dev._worker
    assert worker is not None
    rig.dev.reset()
    assert rig.dev._worker is None and worker.stopping
    rig.drv.add([Buf(struct.pack("<IIQ", T_FLUSH, 0, 0)), Buf(length=1, writable=True)])
    rig.dev.notify(0)  # nothing serves it any more
    assert rig.drv.used() == []


def test_hostile_chain_reports_needs_reset(rig: Rig) -> None:
    rig.drv.write_desc(0x10000, 5, 0x100000, 16, 1, 5)  # loops on itself
    rig.drv.publish(5)
    rig.dev.notify(0)
    assert rig.done.used.acquire(timeout=30)
    assert rig.done.reset_reasons and "loops" in rig.done.reset_reasons[0]


def test_disk_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        DiskImage(str(tmp_path / "missing.img"))
    with pytest.raises(ConfigError, match="cannot open"):
        DiskImage(str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match="not a regular file"):
        DiskImage("/dev/null")
    path = image(tmp_path)
    first = DiskImage(str(path))
    try:
        with pytest.raises(ConfigError, match="in use"):
            DiskImage(str(path))
        with pytest.raises(ConfigError, match="in use"):
            DiskImage(str(path), read_only=True)
    finally:
        first.close()
    a, b = DiskImage(str(path), read_only=True), DiskImage(str(path), read_only=True)  # readers share
    a.close()
    b.close()


def test_capacity_ignores_a_partial_last_sector(tmp_path: Path) -> None:
    disk = DiskImage(str(image(tmp_path, b"\0" * 1300)))
    try:
        assert disk.sectors == 2
    finally:
        disk.close()
