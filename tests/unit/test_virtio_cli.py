"""The --disk / -r / --virtio-transport options: parsing, one-line errors with status 2, and
`broiler layout` listing the virtio functions. No KVM (layout builds the platform without a VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broiler.devices.virtio.pci import TransportKind
from broiler.errors import ConfigError
from broiler.frontend.cli import main
from broiler.vmm.virtio import DiskSpec, parse_disk, parse_transport


def test_parse_disk_options() -> None:
    assert parse_disk("a.img") == DiskSpec("a.img")
    assert parse_disk("a.img,ro=on,serial=xyz") == DiskSpec("a.img", True, "xyz")
    assert parse_transport("legacy") is TransportKind.LEGACY
    for bad in ("", "a.img,ro=maybe", "a.img,cache=none", "a.img,serial=" + "x" * 21):
        with pytest.raises(ConfigError):
            parse_disk(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--disk", "/nonexistent/disk.img"], "cannot open"),
        (["-r", "/nonexistent/disk.img"], "cannot open"),
        (["--disk", "IMG,bogus=1"], "unknown option"),
        (["--virtio-transport", "pci"], "modern, legacy or transitional"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(bytes(4096))
    args = [a.replace("IMG", str(image)) for a in args]
    assert main(["layout", "-m", "64M", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_layout_lists_virtio_functions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(bytes(4096))
    assert main(["layout", "-m", "64M", "--no-demo-devices", "--rootfs", str(image), "--rng"]) == 0
    out = capsys.readouterr().out
    assert "1af4:1001 class 018000 virtio-blk0" in out and "1af4:1005" in out
    assert (
        main(["layout", "-m", "64M", "--no-demo-devices", "--disk", f"{image},ro=on", "--virtio-transport", "modern"])
        == 0
    )
    assert "1af4:1042" in capsys.readouterr().out


def test_layout_lists_the_console_queues_and_doorbells(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layout", "-m", "64M", "--no-demo-devices", "--rng", "--console", "virtio"]) == 0
    out = capsys.readouterr().out
    # disks, then rng, then console: slots depend only on what was asked for
    assert "00:01.0 1af4:1005" in out and "00:02.0 1af4:1003 class 078000 virtio-console" in out
    assert "virtio-console: transitional, 2 queues (max size 256/256), MSI-X 3 vectors in BAR1" in out
    assert "BAR0+0x10 (legacy, datamatch = queue); BAR4+0x3000, 0x3004 (modern, one per queue)" in out


def test_console_log_that_cannot_be_written_is_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--virtio-console-log", str(tmp_path / "no" / "such" / "dir.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--virtio-console-log" in err and len(err.splitlines()) == 1


def test_stat_table_shows_virtio_queues_and_counters() -> None:
    from broiler.frontend.report import stat_table

    queue = {"size": 8, "enabled": True, "active": True, "avail": 5, "used": 4}
    console = {"slot": 14, "transport": "modern", "status": 0xF, "driver_ok": True, "queues": [queue, queue]}
    counters = {"kicks": 3, "requests": 9, "bytes_read": 6, "bytes_written": 120, "errors": 0}
    snap = {
        "name": "t",
        "uptime": 1.0,
        "devices": [],
        "exits": {},
        "unmapped": {"pio": 0, "mmio": 0},
        "msis_sent": 0,
        "virtio": {"virtio-console": {**console, **counters}},
    }
    row = next(line for line in stat_table(snap, None) if line.startswith("virtio-console"))
    assert row.split() == ["virtio-console", "00:0e.0", "modern", "0x0f", "ok", "5/4", "5/4", "3", "9", "6", "120", "0"]
