"""Doorbells: guest writes caught in the kernel with KVM_IOEVENTFD, handled on the event loop.

A doorbell is (bus, address, length, optional datamatch). KVM completes a matching guest write
without leaving KVM_RUN and bumps an eventfd; the event loop reads the eventfd's counter (the number
of writes since the last read, so no kick is lost) and calls ``callback(kicks)``.

Rules (the same ones KVM applies, checked here first so the error names both parties):

- length is 1, 2, 4 or 8 and the address is aligned to it;
- a doorbell may not overlap another unless both sit on the same address and length with
  different datamatch values (then each value reaches its own handler); a wildcard (no datamatch)
  and any other doorbell on the same address collide.

An access KVM does not catch — another length, a read, a datamatch miss — exits to userspace and
reaches the device registered on the bus there, which must answer it (it usually rings the same
handler: "a doorbell means the same thing on either path").
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..kvm import Vm
from .bus import all_ones
from .eventloop import EventLoop

HISTORY_LIMIT = 1024  # doorbells remembered for the statistics (a guest moving BARs adds entries)


@dataclass(eq=False)
class Doorbell:
    pio: bool
    addr: int
    length: int
    datamatch: int | None
    callback: Callable[[int], None]
    owner: Hashable
    fd: int = -1
    kicks: int = 0  # guest writes caught by KVM
    wakeups: int = 0  # eventfd reads (one may carry several kicks)
    handler_ns: int = 0

    @property
    def end(self) -> int:
        return self.addr + self.length

    def describe(self) -> str:
        dm = "any value" if self.datamatch is None else f"value {self.datamatch:#x}"
        return f"{'pio' if self.pio else 'mmio'} {self.addr:#x}/{self.length} ({dm}) of {self.owner}"


class Doorbells:
    def __init__(self, vm: Vm | None, loop: EventLoop) -> None:
        self.vm = vm
        self.loop = loop
        self._lock = threading.Lock()
        self.active: list[Doorbell] = []
        # One entry per doorbell (owner, bus, address, length, datamatch) for the final statistics: a
        # guest toggling a BAR's decode re-adds the same doorbell and its counts carry on; a guest moving
        # a BAR around adds entries, so the oldest inactive ones go beyond HISTORY_LIMIT (bounded memory).
        self._history: OrderedDict[tuple[object, ...], Doorbell] = OrderedDict()
        self.history_dropped = 0
        self.kicks_by_owner: Counter[Hashable] = Counter()  # totals survive history eviction
        self.observer: Any = None

    def add(
        self,
        *,
        pio: bool,
        addr: int,
        length: int,
        datamatch: int | None,
        callback: Callable[[int], None],
        owner: Hashable,
    ) -> Doorbell:
        if length not in (1, 2, 4, 8):
            raise ConfigError(f"doorbell at {addr:#x}: length {length} is not 1, 2, 4 or 8")
        if addr % length:
            raise ConfigError(f"doorbell at {addr:#x}: not aligned to its length {length}")
        limit = 1 << 16 if pio else 1 << 64
        if not 0 <= addr < limit or addr + length > limit:
            raise ConfigError(f"doorbell at {addr:#x} is outside the {'port' if pio else 'MMIO'} space")
        if datamatch is not None and not 0 <= datamatch <= all_ones(length):
            raise ConfigError(f"doorbell at {addr:#x}: datamatch {datamatch:#x} does not fit in {length} bytes")
        bell = Doorbell(pio, addr, length, datamatch, callback, owner)
        with self._lock:
            for other in self.active:
                if other.pio != pio or not (other.addr < bell.end and addr < other.end):
                    continue
                same_slot = other.addr == addr and other.length == length
                if not same_slot or other.datamatch is None or datamatch is None or other.datamatch == datamatch:
                    raise ConfigError(f"doorbell {bell.describe()} collides with {other.describe()}")
            bell.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            if self.vm is not None:
                try:
                    self.vm.ioeventfd(bell.fd, addr, length, pio=pio, datamatch=datamatch)
                except Exception:
                    os.close(bell.fd)
                    raise
            self.active.append(bell)
            self._remember(bell)
        self.loop.add_reader(bell.fd, lambda: self._ready(bell), pausable=True)  # held by `broiler pause`
        return bell

    @property
    def history(self) -> list[Doorbell]:
        """Every doorbell added (one per owner, bus, address, length, datamatch), oldest first."""
        return list(self._history.values())

    def _remember(self, bell: Doorbell) -> None:
        key = (bell.owner, bell.pio, bell.addr, bell.length, bell.datamatch)
        before = self._history.pop(key, None)
        if before is not None:  # the same doorbell again (decode toggled): keep counting where it stopped
            bell.kicks, bell.wakeups, bell.handler_ns = before.kicks, before.wakeups, before.handler_ns
        self._history[key] = bell
        while len(self._history) > HISTORY_LIMIT:
            oldest = next((k for k, b in self._history.items() if b not in self.active), None)
            if oldest is None:
                break
            del self._history[oldest]
            self.history_dropped += 1

    def _ready(self, bell: Doorbell) -> None:
        try:
            kicks = os.eventfd_read(bell.fd)
        except (BlockingIOError, OSError):
            return
        bell.kicks += kicks
        bell.wakeups += 1
        self.kicks_by_owner[bell.owner] += kicks
        observer = self.observer
        if observer is None:
            t0 = time.perf_counter_ns()
            bell.callback(kicks)
            bell.handler_ns += time.perf_counter_ns() - t0
            return
        observer.begin()  # what the device does on this kick is filed under it (core/observe.py)
        try:
            label = f"{bell.owner} ({kicks} kick{'s' if kicks > 1 else ''}, {'pio' if bell.pio else 'mmio'})"
            observer.emit("doorbell", "p" if bell.pio else "m", bell.addr, bell.length, kicks, label)
            t0 = time.perf_counter_ns()
            bell.callback(kicks)
            bell.handler_ns += time.perf_counter_ns() - t0
        finally:
            observer.end()

    def deliver_held(self) -> None:
        """Hand every kick waiting in an eventfd to its callback now (on the loop thread, with the VM paused):
        a guest write caught just before a pause is part of the device state a snapshot saves, not a count
        left in a kernel object that the snapshot does not hold."""
        with self._lock:
            bells = list(self.active)
        for bell in bells:
            self._ready(bell)

    def remove(self, bell: object) -> None:
        """Stop catching writes for a doorbell ``add`` returned (anything else is ignored)."""
        if not isinstance(bell, Doorbell):
            return
        with self._lock:
            if bell not in self.active:
                return
            self.active.remove(bell)
        if self.vm is not None and self.vm.fd >= 0:
            try:
                self.vm.ioeventfd(
                    bell.fd, bell.addr, bell.length, pio=bell.pio, datamatch=bell.datamatch, deassign=True
                )
            except Exception:
                pass  # the VM is going away with it
        fd = bell.fd

        def drain_and_close() -> None:
            # Read what is left so a kick that raced the removal still reaches the handler, then close.
            self._ready(bell)
            os.close(fd)

        self.loop.remove_reader(fd, then=drain_and_close)

    def remove_owner(self, owner: Hashable) -> int:
        mine = [b for b in self.active if b.owner == owner]
        for b in mine:
            self.remove(b)
        return len(mine)

    def close(self) -> None:
        for b in list(self.active):
            self.remove(b)
