"""newc writer, the probe initramfs, and .deb unpacking (synthetic packages, no network)."""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from broiler.boot.linux import debian
from broiler.boot.linux.initramfs import APPLETS, PROBE_INIT, NewcWriter, build_probe_initramfs, parse_newc
from broiler.errors import ConfigError

FAKE_BUSYBOX = b"\x7fELF" + bytes(1021)


def test_newc_header_and_alignment() -> None:
    w = NewcWriter()
    w.add_dir("bin")
    w.add_file("bin/hello", b"abcde", 0o755)
    w.add_symlink("bin/sh", "hello")
    w.add_char_device("dev/console", 5, 1)
    data = w.finish()
    assert data.startswith(b"070701") and len(data) % 4 == 0
    first = data[:110]
    assert int(first[6 + 8 : 6 + 16], 16) == stat.S_IFDIR | 0o755  # mode
    assert int(first[6 + 88 : 6 + 96], 16) == len("bin") + 1  # namesize
    entries = parse_newc(data)
    assert [(n, stat.S_IFMT(m)) for n, m, _ in entries] == [
        ("bin", stat.S_IFDIR),
        ("bin/hello", stat.S_IFREG),
        ("bin/sh", stat.S_IFLNK),
        ("dev/console", stat.S_IFCHR),
    ]
    assert entries[1][2] == b"abcde" and entries[2][2] == b"hello"
    assert b"TRAILER!!!\0" in data[-128:]
    # Every header starts on a 4-byte boundary.
    pos = 0
    for _ in range(5):
        assert data[pos : pos + 6] == b"070701"
        size, namesize = int(data[pos + 54 : pos + 62], 16), int(data[pos + 94 : pos + 102], 16)
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)


def test_device_numbers() -> None:
    w = NewcWriter()
    w.add_char_device("console", 5, 1)
    data = w.finish()
    assert int(data[6 + 8 * 9 : 6 + 8 * 10], 16) == 5 and int(data[6 + 8 * 10 : 6 + 8 * 11], 16) == 1


def test_duplicates_and_finish() -> None:
    w = NewcWriter()
    w.add_dir("a")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_dir("a/")
    w.finish()
    with pytest.raises(ValueError):
        w.add_dir("b")


def test_probe_initramfs_contents() -> None:
    entries = {n: (m, d) for n, m, d in parse_newc(build_probe_initramfs(FAKE_BUSYBOX))}
    assert entries["init"][1] == PROBE_INIT.encode() and entries["init"][0] & 0o111
    assert entries["bin/busybox"][1] == FAKE_BUSYBOX
    for applet in APPLETS:
        assert entries[f"bin/{applet}"][1] == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"][0])
    for word in (
        "/proc/iomem",
        "/proc/ioports",
        "/proc/interrupts",
        "/proc/cpuinfo",
        "/sys/bus/pci/devices",
        "poweroff -f",
        "mount -t proc",
        "mount -t sysfs",
        "devtmpfs",
    ):
        assert word in PROBE_INIT


def test_probe_initramfs_gzip_and_bad_busybox() -> None:
    data = build_probe_initramfs(FAKE_BUSYBOX, compress=True)
    assert gzip.decompress(data) == build_probe_initramfs(FAKE_BUSYBOX)
    with pytest.raises(ValueError):
        build_probe_initramfs(b"#!/bin/sh")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio tool not installed")
def test_cpio_tool_reads_archive(tmp_path: Path) -> None:
    data = build_probe_initramfs(FAKE_BUSYBOX)
    out = subprocess.run(["cpio", "-t"], input=data, capture_output=True, check=True).stdout.decode()
    assert "init" in out.split() and "bin/busybox" in out.split()


def make_deb(files: dict[str, bytes], compression: str = "xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"ctl"), (f"data.tar.{compression}", buf.getvalue())]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        if len(data) % 2:
            out += b"\n"
    return out


def test_deb_extraction() -> None:
    deb = make_deb(
        {"boot/vmlinuz-6.1.0-99-amd64": b"KERNEL", "boot/config-6.1.0-99-amd64": b"cfg", "usr/share/doc/x": b"doc"}
    )
    assert debian.ar_members(deb)["debian-binary"] == b"2.0\n"
    assert debian.extract_vmlinuz(deb) == ("vmlinuz-6.1.0-99-amd64", b"KERNEL")
    bb = make_deb({"bin/busybox": FAKE_BUSYBOX}, compression="gz")
    assert debian.extract_busybox(bb) == FAKE_BUSYBOX


def test_deb_errors() -> None:
    with pytest.raises(ConfigError, match="not a .deb"):
        debian.ar_members(b"PK\x03\x04")
    with pytest.raises(ConfigError, match="no boot/vmlinuz"):
        debian.extract_vmlinuz(make_deb({"etc/x": b""}))


def test_deb_version() -> None:
    assert debian.deb_version(Path("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb")) == "1:1.35.0-4+deb12u1+b1"
    assert debian.deb_version(Path("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb")) == "6.1.192-2"
