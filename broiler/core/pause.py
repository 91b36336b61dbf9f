"""Pause and resume a whole VM: every vCPU parked between two KVM_RUNs, the event loop's device side held.

The order matters. Pausing parks the vCPUs first, so no new doorbell kick or timer is made by a guest
that is still running, then holds the event loop (timers, doorbell eventfds: core/eventloop.py).
Resuming releases the event loop first, so a completion due is delivered to a guest about to run, then
the vCPUs. ``--timeout`` is wall time and keeps counting during a pause; ``broiler stop`` ends a paused
VM (a stop wakes parked vCPUs, which then leave their loop).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .eventloop import EventLoop
from .vcpu import VcpuThread

PARK_TIMEOUT = 5.0  # seconds a vCPU gets to leave KVM_RUN; a kick normally takes microseconds


@dataclass(frozen=True)
class RunState:
    """What `broiler stat` and `broiler list` show: running or paused, since when (wall clock)."""

    paused: bool
    since: float  # time.time() of the last change (or of the start)

    @property
    def name(self) -> str:
        return "paused" if self.paused else "running"


class VmPause:
    def __init__(self, threads: Sequence[VcpuThread], loop: EventLoop) -> None:
        self._threads = threads
        self._loop = loop
        self._lock = threading.Lock()  # one pause or resume at a time (two control clients may race)
        self.state = RunState(paused=False, since=time.time())
        self.pauses = 0

    @property
    def paused(self) -> bool:
        return self.state.paused

    def pause(self) -> bool:
        """Park every vCPU and hold the devices; False if the VM was paused already."""
        with self._lock:
            if self.state.paused:
                return False
            for t in self._threads:
                t.pause()
            try:
                for t in self._threads:
                    self._wait_parked(t)
            except TimeoutError:
                for t in self._threads:
                    t.resume()
                raise
            self._loop.pause()
            self.state = RunState(paused=True, since=time.time())
            self.pauses += 1
            return True

    def resume(self) -> bool:
        """Release the devices, then the vCPUs; False if the VM was running."""
        with self._lock:
            if not self.state.paused:
                return False
            self._loop.resume()
            for t in self._threads:
                t.resume()
            self.state = RunState(paused=False, since=time.time())
            return True

    @staticmethod
    def _wait_parked(thread: VcpuThread) -> None:
        """Until the thread is parked, or has ended (a stopped vCPU runs no guest code either). A thread
        not started yet is not waited for: its first KVM_RUN sees immediate_exit and parks at once."""
        if thread.thread.ident is None:
            return
        deadline = time.monotonic() + PARK_TIMEOUT
        while not (thread.parked.is_set() or thread.stopped.is_set() or not thread.thread.is_alive()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"vCPU {thread.vcpu.id} did not leave KVM_RUN within {PARK_TIMEOUT:g} s")
            thread.kick()  # a signal can race the KVM_RUN entry; immediate_exit covers that, this is cheap
            thread.parked.wait(0.05)
