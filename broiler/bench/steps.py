"""The steps from the C floor to broiler: one ingredient of a Python VMM added at a time.

Every step runs ``broiler/bench/floor.c``'s own vCPU loop, built a second time as a shared library and
called through ctypes inside this Python process (``floor_run``), so no step is a hand-copied loop
that could drift from the floor. What changes from one step to the next is only what the loop runs
around each KVM_RUN or what else lives in the process:

    inproc      the floor's loop on a thread of this Python process; no Python on that thread
    gil         + that thread holds a Python thread state and releases / re-takes the GIL around every
                KVM_RUN (PyEval_SaveThread / PyEval_RestoreThread: what Py_BEGIN/END_ALLOW_THREADS do
                in broiler/core/_fastexit.c and what fcntl.ioctl does in the pure-Python loop)
    kick        + broiler's kick signal handler installed (core/vcpu.install_kick_handler)
    events      + broiler's event-loop thread alive and idle (core/eventloop.EventLoop, as in a run)

The bench then adds (b), the bare Python loop (``fcntl.ioctl`` from Python), and (c)/(d), broiler's
own loops; the table prints each step's cost and its difference to the one before.
"""

from __future__ import annotations

import ctypes
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.eventloop import EventLoop
from ..core.vcpu import KICK_SIGNAL, install_kick_handler
from . import floor
from .guest import Batch

STEPS = ("inproc", "gil", "kick", "events")
STEP_LABELS = {
    "inproc": "the floor's loop inside this Python process",
    "gil": "+ GIL released and re-taken per KVM_RUN",
    "kick": "+ broiler's kick signal handler installed",
    "events": "+ broiler's event-loop thread alive",
}
OUTPUT_BYTES = 1 << 20


class Hooks(ctypes.Structure):
    """struct floor_hooks (floor.c): function pointers, NULL for none."""

    _fields_ = [
        ("enter", ctypes.c_void_p),
        ("leave", ctypes.c_void_p),
        ("before", ctypes.c_void_p),
        ("after", ctypes.c_void_p),
    ]


def _python_api(name: str) -> int | None:
    return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value


def hooks_for(step: str) -> Hooks:
    if step == "inproc":
        return Hooks()
    return Hooks(
        _python_api("PyGILState_Ensure"),
        _python_api("PyGILState_Release"),
        _python_api("PyEval_SaveThread"),
        _python_api("PyEval_RestoreThread"),
    )


class InProcessFloor:
    """floor.c loaded into this process; ``run`` returns the same JSON the floor process prints."""

    def __init__(self, workdir: Path) -> None:
        self.lib = ctypes.CDLL(str(floor.build_library(workdir)))  # CDLL: the call itself releases the GIL
        self.lib.floor_run.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(Hooks)]
        self.lib.floor_run.restype = ctypes.c_int
        self.out = ctypes.create_string_buffer(OUTPUT_BYTES)

    def run(self, step: str, image: bytes, mem_size: int, batches: list[Batch], extra: list[str]) -> dict[str, object]:
        """``extra``: more configuration lines (the clock)."""
        hooks = hooks_for(step)
        with floor.prepared_guest(image, mem_size, 1, batches, extra) as (_fd, text), _environment(step):
            status = self.lib.floor_run(text.encode(), self.out, OUTPUT_BYTES, ctypes.byref(hooks))
        if status != 0:
            raise RuntimeError(f"the in-process C floor failed (status {status}, step {step})")
        return json.loads(self.out.value)  # type: ignore[no-any-return]


@contextmanager
def _environment(step: str) -> Iterator[None]:
    """The process around the loop: the kick handler from step "kick" on, the event loop in "events"."""
    previous = signal.getsignal(KICK_SIGNAL)
    loop: EventLoop | None = None
    if STEPS.index(step) < STEPS.index("kick"):
        signal.signal(KICK_SIGNAL, signal.SIG_DFL)  # no vCPU thread exists meanwhile: no kick can come
    else:
        install_kick_handler()
    if step == "events":
        loop = EventLoop()
        loop.start()
    try:
        yield
    finally:
        if loop is not None:
            loop.close()
        signal.signal(KICK_SIGNAL, previous)
