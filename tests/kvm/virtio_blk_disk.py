"""What guests/multiboot/virtio_blk_test.c does to a disk, computed on the host: the pattern, the sector
ranges it writes, and the image a run must leave behind. Shared by the QEMU and the broiler tests."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

from tests.conftest import ROOT

KERNEL = ROOT / "broiler" / "guests" / "virtio_blk_test.elf"
SECTOR = 512
DISK_SECTORS = 2048  # 1 MiB
SERIAL = "broiler-vblk-1"
BENCH_KERNEL = ROOT / "broiler" / "guests" / "virtio_blk_bench.elf"
BENCH_LINE = re.compile(
    r"^bench: (?P<test>randread|randwrite|seqread) bs=(?P<bs>\d+) qd=(?P<qd>\d+) requests=(?P<requests>\d+) "
    r"errors=(?P<errors>\d+) ns=(?P<ns>\d+) iops=(?P<iops>\d+) mbps=(?P<mbps>\d+\.\d)$",
    re.M,
)
BENCH_DISK_SECTORS = 8192  # 4 MiB


def pattern_sector(sector: int) -> bytes:
    """Word k of sector s: (s * 0x9e3779b1) ^ (k * 0x01000193) ^ 0x62726f69, little-endian (see the kernel)."""
    words = [((sector * 0x9E3779B1) ^ (k * 0x01000193) ^ 0x62726F69) & 0xFFFFFFFF for k in range(SECTOR // 4)]
    return struct.pack(f"<{len(words)}I", *words)


def written_ranges(sectors: int = DISK_SECTORS) -> list[tuple[int, int]]:
    """(first sector, count) of the four ranges the kernel writes."""
    return [(0, 8), (16, 2), (sectors // 2, 4), (sectors - 1, 1)]


def expected_image(sectors: int = DISK_SECTORS) -> bytes:
    """A zeroed disk after a passing read-write run (also the read-only run's starting image)."""
    image = bytearray(sectors * SECTOR)
    for first, count in written_ranges(sectors):
        for s in range(first, first + count):
            image[s * SECTOR : (s + 1) * SECTOR] = pattern_sector(s)
    return bytes(image)


def make_disk(path: Path, *, prefilled: bool) -> Path:
    path.write_bytes(expected_image() if prefilled else bytes(DISK_SECTORS * SECTOR))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def guest_cmdline(transport: str, irq: str, ro: bool) -> str:
    words = [f"transport={transport}", f"irq={irq}", f"expect_serial={SERIAL}", f"expect_sectors={DISK_SECTORS}"]
    return " ".join(words + (["ro=1"] if ro else []))


def assert_guest_passed(stdout: str, returncode: int, *, transport: str, irq: str) -> None:
    """Status 1 (debug-exit value 0) and the lines that show the kernel did what the case asked."""
    detail = stdout[-4000:]
    assert "virtio-blk-test: PASSED" in stdout, detail
    assert returncode == 1, detail
    assert re.search(rf"^virtio-blk: slot=\d+ device_id=0x\w+ transport={transport} ", stdout, re.M), detail
    assert re.search(rf"^virtio-blk: capacity={DISK_SECTORS} .* irq={irq}", stdout, re.M), detail
    assert f"virtio-blk: serial={SERIAL}" in stdout, detail
    counts = re.search(r"^virtio-blk: kicks=(\d+) queue_interrupts=(\d+)", stdout, re.M)
    assert counts, detail
    assert (int(counts.group(2)) == 0) == (irq == "poll"), detail


def assert_bench_passed(stdout: str, returncode: int, disk: Path) -> None:
    """virtio_blk_bench.elf run with requests=64 on a zeroed 4 MiB disk: five parseable result lines, every
    request OK, status 1, and every block randwrite wrote carries its own sector number and the tag."""
    assert returncode == 1 and "bench: done" in stdout, stdout[-4000:]
    assert re.search(rf"^bench: setup transport=modern irq=msix capacity={BENCH_DISK_SECTORS} ", stdout, re.M), stdout
    rows = [m.groupdict() for m in BENCH_LINE.finditer(stdout)]
    assert [(r["test"], r["bs"], r["qd"]) for r in rows] == [
        ("randread", "4096", "1"),
        ("randread", "4096", "32"),
        ("randwrite", "4096", "1"),
        ("randwrite", "4096", "32"),
        ("seqread", "131072", "1"),
    ], stdout
    for row in rows:
        assert row["requests"] == "64" and row["errors"] == "0", row
        assert int(row["ns"]) > 0 and int(row["iops"]) > 0, row
    image = disk.read_bytes()
    stamped = [off for off in range(0, len(image), 4096) if any(image[off : off + 4096])]
    assert stamped, "randwrite should have written the scratch disk"
    for off in stamped:
        assert image[off : off + 16] == struct.pack("<Q", off // 512) + b"bench!!\0", off
        assert not any(image[off + 16 : off + 4096]), off
