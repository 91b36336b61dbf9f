"""Device state <-> JSON: the one place that decides how ``bytes`` travel in a snapshot's JSON parts.

``save_devices`` returns dicts, lists, int, str, bool, None, float and ``bytes``. JSON has no bytes, so
``encode`` writes each as ``{"$bytes": "<base64>"}`` and ``decode`` turns such a one-key dict back into
``bytes``. A tree that already holds a one-key ``"$bytes"`` dict, a non-str key or any other type cannot be
encoded (``TypeError`` naming where): it would not come back the same. ``decode`` is given a file's
contents, so malformed base64 is a ``SnapshotError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ...errors import SnapshotError

BYTES_KEY = "$bytes"


def encode(tree: Any, where: str = "state") -> Any:
    """``tree`` with every bytes value replaced by ``{"$bytes": base64}`` (a new tree; JSON-able)."""
    if isinstance(tree, bytes | bytearray):
        return {BYTES_KEY: base64.b64encode(bytes(tree)).decode("ascii")}
    if isinstance(tree, dict):
        if list(tree) == [BYTES_KEY]:
            raise TypeError(f"{where}: a dict whose only key is {BYTES_KEY!r} would decode as bytes")
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            out[key] = encode(value, f"{where}.{key}")
        return out
    if isinstance(tree, list | tuple):
        return [encode(item, f"{where}[{n}]") for n, item in enumerate(tree)]
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"{where}: a {type(tree).__name__} cannot be saved")


def decode(tree: Any) -> Any:
    """The inverse of ``encode``: ``{"$bytes": base64}`` dicts become bytes again."""
    if isinstance(tree, dict):
        if list(tree) == [BYTES_KEY]:
            text = tree[BYTES_KEY]
            if not isinstance(text, str):
                raise SnapshotError(f"a {BYTES_KEY} value is a {type(text).__name__}, not base64 text")
            try:
                return base64.b64decode(text.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError) as err:
                raise SnapshotError(f"a {BYTES_KEY} value is not base64: {err}") from None
        return {key: decode(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [decode(item) for item in tree]
    return tree


def dumps(tree: Any) -> str:
    return json.dumps(encode(tree), separators=(",", ":"), sort_keys=True)


def loads(text: str | bytes) -> Any:
    try:
        return decode(json.loads(text))
    except (ValueError, RecursionError) as err:
        raise SnapshotError(f"device state is not valid JSON: {err}") from None
