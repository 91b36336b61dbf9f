"""Reading the files a user names on the command line, with one clear line for every failure.

Only regular files are read: a device (/dev/zero), a FIFO or a socket could feed broiler forever or
block it, and none of them is a sensible guest image, kernel, initrd or module. Sizes are checked
before reading (``limit``), so an image larger than guest RAM is refused without being read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError


def check_input(path: str | Path, what: str, *, limit: int | None = None) -> int:
    """The size of ``path`` if it is a regular file no larger than ``limit``; ConfigError otherwise."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {str(path)!r} is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {str(path)!r} is not a regular file (a device, FIFO or socket cannot be one)")
    if limit is not None and info.st_size > limit:
        raise ConfigError(f"{what} {str(path)!r} ({info.st_size} bytes) does not fit in guest RAM ({limit} bytes)")
    return info.st_size


def read_input(path: str | Path, what: str, *, allow_empty: bool = False, limit: int | None = None) -> bytes:
    """The bytes of ``path``; ConfigError("<what> '<path>' does not exist" / "is empty" / ...) otherwise."""
    size = check_input(path, what, limit=limit)
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1 if limit is None else min(size, limit) + 1)  # bounded even if it grows
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if limit is not None and len(data) > limit:
        raise ConfigError(f"{what} {str(path)!r} does not fit in guest RAM ({limit} bytes)")
    if not data and not allow_empty:
        raise ConfigError(f"{what} {str(path)!r} is empty")
    return data


def read_head(path: str | Path, what: str, size: int) -> bytes:
    """The first ``size`` bytes of a regular file (to tell what kind of kernel it is)."""
    check_input(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(size)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not data:
        raise ConfigError(f"{what} {str(path)!r} is empty")
    return data


def check_output(path: str | Path, what: str) -> None:
    """Refuse, before anything runs, an output file that could not be written at the end."""
    target = Path(path)
    if str(path) == "":
        raise ConfigError(f"{what} needs a file name")
    if target.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: it is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {what} {str(path)!r}: no directory {str(parent)!r}")
    if target.exists() and not os.access(target, os.W_OK) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} {str(path)!r}: permission denied")
