"""The snapshot file without KVM (docs/snapshot.md): the prefix and state round-trip and refuse damage, guest
RAM is written sparse (only pages that are not zero) and comes back through a lazy file-backed mapping, and
a snapshot of memory restored that way is still complete."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from broiler.core.memory import FileBacking, GuestMemory, MemoryMap, MiB
from broiler.errors import SnapshotError
from broiler.kvm.abi import buffer_address
from broiler.vmm.snapshot import format as fmt
from broiler.vmm.snapshot.pages import CHUNK, verify_memory, write_memory


def _write(path: Path, memory: GuestMemory, state: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []

    def fill(fd: int) -> fmt.Layout:
        mem_len, regions = write_memory(memory, fd, fmt.PREFIX_SIZE)
        records.extend(regions)
        return fmt.Layout(fmt.PREFIX_SIZE, mem_len, fmt.PREFIX_SIZE + mem_len, 0)

    return fmt.write_atomically(str(path), fill, lambda: {**state, "memory": records}), records


def _restored(path: Path) -> tuple[GuestMemory, dict[str, Any]]:
    with open(path, "rb") as f:
        _, state = fmt.read_state(f, str(path))
        regions = state["memory"]
        backing = FileBacking(os.dup(f.fileno()), tuple(r["file_offset"] for r in regions))
    return GuestMemory(MemoryMap(32 * MiB), backing), state


def test_state_round_trips_with_bytes(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    state = {"blob": b"\x00\xffabc", "nested": [{"x": b"", "n": 3}], "text": "ok"}
    _write(tmp_path / "s", memory, state)
    _, back = _restored(tmp_path / "s")
    assert {k: back[k] for k in state} == state


def test_only_pages_that_are_not_zero_take_disk_space_and_come_back(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    memory.write(0x1000, b"low page")
    memory.write(20 * MiB + 5, b"\x01" * 10000)  # three pages
    memory.write(8 * MiB, bytes(4096))  # touched but zero: not written
    on_disk, records = _write(tmp_path / "s", memory, {})
    assert on_disk < 64 * 1024  # the prefix, 4 data pages, the state
    assert os.path.getsize(tmp_path / "s") > 32 * MiB  # apparent: all of RAM, in holes
    assert [c[0] for c in records[0]["chunks"]] == [0, 20 * MiB // CHUNK]
    back, _ = _restored(tmp_path / "s")
    assert back.read(0x1000, 8) == b"low page"
    assert back.read(20 * MiB + 5, 10000) == b"\x01" * 10000
    assert back.read(20 * MiB, 5) == bytes(5) and back.read(8 * MiB, 4096) == bytes(4096)


def test_a_restored_memory_snapshots_complete_with_its_own_writes(tmp_path: Path) -> None:
    """Pages still only in the old file (never touched since the restore) and pages written since both go in."""
    memory = GuestMemory(MemoryMap(32 * MiB))
    memory.write(3 * MiB, b"from the first snapshot")
    _write(tmp_path / "one", memory, {})
    back, _ = _restored(tmp_path / "one")
    back.write(30 * MiB, b"written after the restore")
    _write(tmp_path / "two", back, {})
    (tmp_path / "one").unlink()  # the second file stands alone
    again, _ = _restored(tmp_path / "two")
    assert again.read(3 * MiB, 23) == b"from the first snapshot"
    assert again.read(30 * MiB, 25) == b"written after the restore"


def test_the_file_is_private_to_the_restored_guest(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    memory.write(0, b"saved")
    _write(tmp_path / "s", memory, {})
    back, _ = _restored(tmp_path / "s")
    back.write(0, b"guest")
    again, _ = _restored(tmp_path / "s")
    assert again.read(0, 5) == b"saved"  # MAP_PRIVATE: the guest's writes never reach the file


def test_verify_finds_damaged_memory(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    memory.write(MiB, b"x" * 100)
    _, records = _write(tmp_path / "s", memory, {})
    with open(tmp_path / "s", "r+b") as f:
        verify_memory(f.fileno(), records, "s")  # intact
        f.seek(fmt.PREFIX_SIZE + MiB + 50)
        f.write(b"y")
        f.flush()
        with pytest.raises(SnapshotError, match="damaged"):
            verify_memory(f.fileno(), records, "s")


def _prefix(layout: fmt.Layout, raw: bytes) -> bytes:
    return fmt.pack_prefix(layout, zlib.crc32(raw))


def test_prefix_refuses_foreign_damaged_and_other_versions() -> None:
    layout = fmt.Layout(4096, 8192, 12288, 10)
    good = _prefix(layout, b"0123456789")
    assert fmt.unpack_prefix(good, "f") == (layout, zlib.crc32(b"0123456789"))
    with pytest.raises(SnapshotError, match="not a broiler snapshot"):
        fmt.unpack_prefix(b"\x7fELF" + good[4:], "f")
    with pytest.raises(SnapshotError, match="damaged"):
        fmt.unpack_prefix(good[:30] + b"\x99" + good[31:], "f")
    with pytest.raises(SnapshotError, match="version 2"):
        fmt.unpack_prefix(fmt.pack_prefix(layout, 0, version=2), "f")
    with pytest.raises(SnapshotError, match="too short"):
        fmt.unpack_prefix(good[:10], "f")


def test_truncated_and_damaged_state_are_refused(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    _write(tmp_path / "s", memory, {"k": 1})
    raw = (tmp_path / "s").read_bytes()
    truncated = tmp_path / "t"
    truncated.write_bytes(raw[:-3])
    with open(truncated, "rb") as f, pytest.raises(SnapshotError, match="truncated"):
        fmt.read_state(f, "t")
    damaged = tmp_path / "d"
    damaged.write_bytes(raw[:-3] + b"zzz")
    with open(damaged, "rb") as f, pytest.raises(SnapshotError, match="damaged"):
        fmt.read_state(f, "d")


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path: Path) -> None:
    def fill(fd: int) -> fmt.Layout:
        raise OSError(28, "No space left on device")

    with pytest.raises(SnapshotError, match="No space left"):
        fmt.write_atomically(str(tmp_path / "s"), fill, dict)
    assert list(tmp_path.iterdir()) == []


def _present_pages(memory: GuestMemory) -> int:
    """Pages of guest RAM mapped into this process now (pagemap bit 63), touching none of them."""
    present = 0
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        for _, _, mm in memory.regions:
            entries = os.pread(pagemap.fileno(), len(mm) // 4096 * 8, buffer_address(mm) // 4096 * 8)
            present += sum(1 for top in entries[7::8] if top & 0x80)
    return present


def test_restore_reads_no_memory_until_the_guest_touches_it(tmp_path: Path) -> None:
    memory = GuestMemory(MemoryMap(32 * MiB))
    memory.fill(MiB, 16 * MiB, 0x5A)
    _write(tmp_path / "s", memory, {})
    back, _ = _restored(tmp_path / "s")
    assert _present_pages(back) == 0  # mapped, not read: the restore cost nothing per page
    assert back.read(5 * MiB, 4) == b"\x5a" * 4
    # The page read, and what the kernel maps around it in one fault (fault-around; large page-cache folios
    # made that 256 pages here): far from the 4096 pages of data the file holds.
    assert 1 <= _present_pages(back) <= 512
