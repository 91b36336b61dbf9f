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
