"""Guards around code a user hands broiler: a device that misbehaves is reported as the device's fault.

broiler's own devices never raise over guest behaviour (core/bus.py), so they are registered bare and the
exit path pays nothing for this module. A user's device (``--device``, ``Machine.add_device``) is
wrapped once, at registration, in a ``GuardedDevice``: one extra call per access to that device only,
and a ``try`` that costs nothing until something raises.

A fault is an exception from ``read``/``write`` (or a doorbell or timer callback), or a ``read`` that
returns something other than an int in [0, 2**(8*size)). The guard answers the access as an unmapped one
would (all ones, write dropped), builds the report — one line naming the device, the access and the
file:line of the device's code, then only the device's own traceback lines — and hands it to
``on_fault``, which stops the VM (broiler/vmm/userdev.py: exit status ``exitcodes.DEVICE_FAULT``).
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import BroilerError, SnapshotError
from .bus import Device, all_ones

FaultSink = Callable[[str], None]  # receives the whole report (first line = the summary)


def _code_location(fn: object) -> str:
    """file:line where ``fn`` is defined (a bound method's function), or '?' if Python cannot tell."""
    target = getattr(fn, "__func__", fn)
    try:
        _lines, line = inspect.getsourcelines(target)  # type: ignore[arg-type]
        return f"{inspect.getsourcefile(target)}:{line}"  # type: ignore[arg-type]
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "?"


def _device_frames(tb: TracebackType | None) -> tuple[str, list[str]]:
    """(file:line of the innermost frame, the formatted frames) of the traceback below the guard."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "?", []
    last = frames[-1]
    return f"{last.filename}:{last.lineno}", traceback.format_list(frames)


def fault_report(device: str, access: str, exc: BaseException | None, fn: object, problem: str = "") -> str:
    """The report for one fault: a summary line, then the device's traceback lines (if it raised)."""
    if exc is not None:
        where, frames = _device_frames(exc.__traceback__.tb_next if exc.__traceback__ else None)
        summary = f"device {device!r} failed on {access}: {type(exc).__name__}: {exc} ({where})"
        tail = ["Traceback of the device code (most recent call last):\n", *frames]
        tail += traceback.format_exception_only(type(exc), exc)
        return summary + "\n" + "".join(tail).rstrip("\n")
    return f"device {device!r} failed on {access}: {problem} ({_code_location(fn)})"


class GuardedDevice(Device):
    """``device`` behind a fault check. ``describe(offset)`` names an access's location for the report
    (called only on a fault, so it may be slow); ``on_fault`` gets the report."""

    def __init__(self, device: Any, name: str, describe: Callable[[int], str], on_fault: FaultSink) -> None:
        # no Device.__init__: the counters the reports read are the wrapped device's (see guest_errors)
        self.inner = device
        self.name = name
        self._read = device.read
        self._write = device.write
        self._describe = describe
        self._on_fault = on_fault

    # -- snapshot: a user's device takes part if it defines save_state/load_state (docs/api.md) -----
    @property
    def saves_state(self) -> bool:
        return callable(getattr(self.inner, "save_state", None)) and callable(getattr(self.inner, "load_state", None))

    def save_state(self) -> dict[str, Any]:
        if not self.saves_state:
            return {}  # stateless, as docs/api.md says
        try:
            state = self.inner.save_state()
        except Exception as exc:
            raise BroilerError(f"{self.name}: save_state raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict):
            raise BroilerError(f"{self.name}: save_state returned a {type(state).__name__}, not a dict")
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if not self.saves_state:
            if state:
                raise SnapshotError(f"{self.name}: saved state given, but the device has no load_state")
            return
        try:
            self.inner.load_state(state)
        except Exception as exc:  # the user's code judged the state (or failed): one line, exit 2
            raise SnapshotError(f"{self.name}: load_state refused the saved state: {exc}") from exc

    def read(self, offset: int, size: int) -> int:
        try:
            value = self._read(offset, size)
        except Exception as exc:
            self._fault(f"a {size}-byte read at {self._describe(offset)}", exc)
            return all_ones(size)
        if isinstance(value, int) and 0 <= value <= all_ones(size):
            return value
        problem = (
            f"read returned {value!r}, not an int"
            if not isinstance(value, int)
            else f"read returned {value:#x}, which does not fit in {size} byte{'s' if size > 1 else ''}"
        )
        self._on_fault(
            fault_report(self.name, f"a {size}-byte read at {self._describe(offset)}", None, self._read, problem)
        )
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        try:
            self._write(offset, size, value)
        except Exception as exc:
            self._fault(f"a {size}-byte write of {value:#x} at {self._describe(offset)}", exc)

    def _fault(self, access: str, exc: BaseException) -> None:
        self._on_fault(fault_report(self.name, access, exc, None))

    @property
    def guest_errors(self) -> int:  # type: ignore[override]
        return int(getattr(self.inner, "guest_errors", 0))

    def __getattr__(self, attr: str) -> Any:
        # stats and layout look for counters (guest_errors...) and ``describe`` on the device itself
        return getattr(self.inner, attr)


def guard_callback(fn: Callable[..., None], device: str, what: str, on_fault: FaultSink) -> Callable[..., None]:
    """``fn`` (a doorbell or timer callback of a user's device) reporting its exceptions as the device's fault."""

    def guarded(*args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            on_fault(fault_report(device, what, exc, None))

    return guarded
