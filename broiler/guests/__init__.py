"""The guest images shipped with broiler (built from guests/ by guests/build.py).

A leaf of the package: it imports nothing from broiler, so every layer (the bench, the command line,
the tests) can read an image without importing the command line.
"""

from __future__ import annotations

from importlib import resources


def packaged_guest(name: str) -> bytes:
    """The flat64 image ``broiler/guests/<name>.bin``."""
    return resources.files(__name__).joinpath(f"{name}.bin").read_bytes()
