"""The IO thread of one block device. Kicks arrive on the event-loop thread and only wake it; the
disk work (and the used-ring update and interrupt that follow it) happens here, so a slow disk never
stalls the event loop or a vCPU."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("broiler.virtio.block")


class Worker(Protocol):
    """What the block device needs of its IO thread (``IoWorker``; record/replay hands in others)."""

    def kick(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    def wait_idle(self, timeout: float = 10.0) -> bool: ...


WorkerFactory = Callable[[str, Callable[[], None]], Worker]  # (thread name, the work to run when kicked)


class IoWorker:
    """Runs ``work()`` whenever kicked, one call at a time, until stopped."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        self.name = name
        self._work = work
        self._wake = threading.Event()
        self._stopping = False
        self._working = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish its current request and exit; True once it has."""
        self._stopping = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._working = True  # before the clear, so wait_idle never sees neither
            self._wake.clear()
            if self._stopping:
                self._working = False
                return
            try:
                self._work()
            except Exception:  # a bug in broiler: keep the VM alive, say what happened once
                log.exception("%s: IO worker failed", self.name)
                return
            finally:
                self._working = False

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no kick is waiting and no work is running (the VM is paused, so none comes); True if so."""
        deadline = time.monotonic() + timeout
        while self._wake.is_set() or self._working:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return not self._thread.is_alive()
            time.sleep(0.001)
        return True
