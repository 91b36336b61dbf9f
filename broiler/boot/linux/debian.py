"""Fetch a Debian 12 kernel and busybox-static with apt-get, and unpack them without dpkg.

Used by tools/fetch-debian-kernel (and a CLI command, if the lead wires one). A .deb is an ar
archive holding debian-binary, control.tar.* and data.tar.*; we read it in Python so the host needs
only apt-get (for the download), not dpkg-deb or root.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import zstandard

from ...errors import ConfigError

DEFAULT_CACHE = Path("~/.cache/broiler/linux").expanduser()
FLAVOURS = ("amd64", "cloud-amd64")


def ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a System V / GNU ar archive (the .deb container)."""
    if not data.startswith(b"!<arch>\n"):
        raise ConfigError("not a .deb (ar) archive")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        hdr = data[pos : pos + 60]
        name = hdr[:16].decode("ascii").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        pos += 60
        out[name] = data[pos : pos + size]
        pos += size + (size & 1)  # members are 2-byte aligned
    return out


def _open_data_tar(member_name: str, blob: bytes) -> tarfile.TarFile:
    if member_name.endswith(".zst"):
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        return tarfile.open(fileobj=io.BytesIO(blob), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def deb_files(deb: bytes, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Regular files of the .deb's data.tar whose path (without the leading './') ``wanted`` accepts."""
    members = ar_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ConfigError("the .deb has no data.tar member")
    out: dict[str, bytes] = {}
    with _open_data_tar(data_name, members[data_name]) as tar:
        for info in tar:
            path = info.name.removeprefix("./")
            if info.isfile() and wanted(path):
                f = tar.extractfile(info)
                assert f is not None
                out[path] = f.read()
    return out


def resolve_kernel_package(flavour: str) -> str:
    """linux-image-<flavour> is a meta package; return the versioned package it depends on."""
    meta = f"linux-image-{flavour}"
    try:
        text = subprocess.run(["apt-cache", "depends", meta], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ConfigError(f"apt-cache depends {meta} failed ({e}); run apt-get update first") from None
    m = re.search(r"Depends:\s+(linux-image-\S+)", text)
    if not m:
        raise ConfigError(f"apt-cache knows no kernel package behind {meta}; run apt-get update first")
    return m.group(1)


def apt_download(packages: list[str], dest: Path) -> list[Path]:
    """`apt-get download` into ``dest``; returns the .deb paths (newest match per package)."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o777)  # apt drops privileges to _apt for the download when it can
    try:
        subprocess.run(["apt-get", "download", *packages], cwd=dest, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ConfigError(f"apt-get download {' '.join(packages)} failed: {e}") from None
    debs = []
    for p in packages:
        found = sorted(dest.glob(f"{p}_*.deb"), key=lambda x: x.stat().st_mtime)
        if not found:
            raise ConfigError(f"apt-get download left no .deb for {p}")
        debs.append(found[-1])
    return debs


def deb_version(path: Path) -> str:
    """package_version_arch.deb -> version (with the epoch's ':' as apt escapes it, %3a)."""
    parts = path.name.removesuffix(".deb").split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else "?"


def extract_vmlinuz(deb: bytes) -> tuple[str, bytes]:
    files = deb_files(deb, lambda p: p.startswith("boot/vmlinuz-"))
    if not files:
        raise ConfigError("the kernel package contains no boot/vmlinuz-*")
    name = sorted(files)[0]
    return name.removeprefix("boot/"), files[name]


def extract_busybox(deb: bytes) -> bytes:
    files = deb_files(deb, lambda p: p in ("bin/busybox", "usr/bin/busybox"))
    if not files:
        raise ConfigError("the busybox package contains no bin/busybox")
    return next(iter(files.values()))
