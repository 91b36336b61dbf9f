"""Device state for snapshots: what a device saves, and how a saved state is checked on its way back in.

A device says what it holds with one class attribute, ``state_fields``: the names of its register
attributes, each optionally with a bit width (``"ier:8"``), or ``()`` (``STATELESS``) for a device that
has none. ``save_fields``/``load_fields`` turn those attributes into a JSON-able dict and back; a device
with more than plain registers (a timer, a queue, pending work) overrides ``save_state``/``load_state``
and uses the ``take_*`` checkers below for its own keys.

A saved state comes from a file, so it is treated like guest input: every key must be there and nothing
else, every value must have the type and range the live attribute has. Anything else raises
``SnapshotError`` naming the device and the field; nothing is changed half-way through a field, and no
state can make a device hold more memory than it could hold running (byte strings keep their length,
queues their bound).

Types ``save_fields`` knows (from the live attribute): bool, int (0 <= v < 2**bits, 64 bits unless
given), str, bytes/bytearray (same length), a dict of int keys to ints (same keys; JSON keys become
strings), and ``None``-or-int fields (declared ``"name?"`` or ``"name?:8"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SnapshotError

STATELESS: tuple[str, ...] = ()
DEFAULT_BITS = 64


def _parse(spec: str) -> tuple[str, int, bool]:
    """``"name"``, ``"name:8"`` or ``"name?:8"`` (may be None) -> (attribute, bits, optional)."""
    optional = "?" in spec
    spec = spec.replace("?", "")
    name, _, bits = spec.partition(":")
    return name, int(bits) if bits else DEFAULT_BITS, optional


def _plain(value: Any) -> Any:
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


def save_fields(obj: object, fields: tuple[str, ...]) -> dict[str, Any]:
    """The declared attributes of ``obj`` as a JSON-able dict (bytes stay bytes)."""
    return {name: _plain(getattr(obj, name)) for name, _, _ in map(_parse, fields)}


def check_keys(state: object, keys: tuple[str, ...] | list[str], who: str) -> Mapping[str, Any]:
    """``state`` must be a dict with exactly ``keys``."""
    if not isinstance(state, dict):
        raise SnapshotError(f"{who}: saved state is a {type(state).__name__}, not a dict")
    missing = [k for k in keys if k not in state]
    if missing:
        raise SnapshotError(f"{who}: saved state lacks {', '.join(missing)}")
    foreign = [str(k) for k in state if k not in keys]
    if foreign:
        raise SnapshotError(f"{who}: saved state has unknown fields {', '.join(sorted(foreign))}")
    return state


def take_int(state: Mapping[str, Any], key: str, who: str, bits: int = DEFAULT_BITS, *, low: int = 0) -> int:
    value = state[key]
    if type(value) is not int or not low <= value < (1 << bits):
        raise SnapshotError(f"{who}: {key} = {value!r} is not an integer in [{low}, 2**{bits})")
    return value


def take_bool(state: Mapping[str, Any], key: str, who: str) -> bool:
    value = state[key]
    if type(value) is not bool:
        raise SnapshotError(f"{who}: {key} = {value!r} is not true or false")
    return value


def take_bytes(state: Mapping[str, Any], key: str, who: str, length: int | None = None, *, most: int = 0) -> bytes:
    """Bytes of exactly ``length`` (or at most ``most``) bytes."""
    value = state[key]
    if not isinstance(value, bytes | bytearray):
        raise SnapshotError(f"{who}: {key} is a {type(value).__name__}, not bytes")
    if length is not None and len(value) != length:
        raise SnapshotError(f"{who}: {key} holds {len(value)} bytes, not {length}")
    if length is None and len(value) > most:
        raise SnapshotError(f"{who}: {key} holds {len(value)} bytes, more than {most}")
    return bytes(value)


def take_list(state: Mapping[str, Any], key: str, who: str, most: int) -> list[Any]:
    value = state[key]
    if not isinstance(value, list) or len(value) > most:
        raise SnapshotError(f"{who}: {key} is not a list of at most {most} items")
    return value


def take_str(state: Mapping[str, Any], key: str, who: str, *, optional: bool = False) -> str | None:
    value = state[key]
    if optional and value is None:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise SnapshotError(f"{who}: {key} = {value!r} is not a string")
    return value


def _checked(obj: object, name: str, bits: int, optional: bool, state: Mapping[str, Any], who: str) -> Any:
    current = getattr(obj, name)
    if optional and state[name] is None:
        return None
    if isinstance(current, bool):
        return take_bool(state, name, who)
    if isinstance(current, int) or optional:
        return take_int(state, name, who, bits)
    if isinstance(current, str):
        return take_str(state, name, who)
    if isinstance(current, bytes | bytearray):
        data = take_bytes(state, name, who, len(current))
        return bytearray(data) if isinstance(current, bytearray) else data
    if isinstance(current, dict):
        saved = check_keys(state[name], [str(k) for k in current], f"{who} {name}")
        return {k: take_int(saved, str(k), f"{who} {name}", bits) for k in current}
    raise TypeError(f"{who}: field {name} of type {type(current).__name__} needs its own save_state")


def load_fields(obj: object, fields: tuple[str, ...], state: object, who: str) -> None:
    """Check ``state`` against the declared fields of ``obj``, then set them all (all or nothing)."""
    parsed = [_parse(spec) for spec in fields]
    saved = check_keys(state, [name for name, _, _ in parsed], who)
    values = {name: _checked(obj, name, bits, optional, saved, who) for name, bits, optional in parsed}
    for name, value in values.items():
        setattr(obj, name, value)
