"""Reading the files a user names on the command line, with one clear line for every failure."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def read_input(path: str | Path, what: str, *, allow_empty: bool = False) -> bytes:
    """The bytes of ``path``; ConfigError("<what> '<path>' does not exist" / "is empty" / ...) otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {str(path)!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not data and not allow_empty:
        raise ConfigError(f"{what} {str(path)!r} is empty")
    return data
