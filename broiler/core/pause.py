"""Pause and resume a whole VM: every vCPU parked between two KVM_RUNs, the event loop's device side held.

The order matters. Pausing parks the vCPUs first, so no new doorbell kick or timer is made by a guest
that is still running, then holds the event loop (timers, doorbell eventfds: core/eventloop.py).
Resuming releases the event loop first, so a completion due is delivered to a guest about to run, then
the vCPUs. ``--timeout`` is wall time and keeps counting during a pause; ``broiler stop`` ends a paused
VM (a stop wakes parked vCPUs, which then leave their loop).

A guest's S3 sleep (vmm/sleep.py) parks the VM the same way but as "suspended": ``broiler resume`` does not
end it (the guest must come back through its waking vector, not after its sleep instruction), ``wake`` does,
after the machine has reset the vCPUs.
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
    """What `broiler stat` and `broiler list` show: running, paused or suspended (S3), since when (wall clock)."""

    paused: bool
    since: float  # time.time() of the last change (or of the start)
    suspended: bool = False  # paused by the guest's own S3 sleep, not by `broiler pause`

    @property
    def name(self) -> str:
        return "suspended" if self.suspended else "paused" if self.paused else "running"


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

    def pause(self, *, suspend: bool = False) -> bool:
        """Park every vCPU and hold the devices; False if the VM was paused already. ``suspend``: the
        guest's S3 sleep, shown as "suspended" and ended only by ``wake``."""
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
            self.state = RunState(paused=True, since=time.time(), suspended=suspend)
            self.pauses += not suspend
            return True

    def resume(self, *, wake: bool = False) -> bool:
        """Release the devices, then the vCPUs; False if the VM was running, or is suspended and this is
        not the ``wake`` (a suspended guest resumes only through its waking vector)."""
        with self._lock:
            if not self.state.paused or self.state.suspended != wake:
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
