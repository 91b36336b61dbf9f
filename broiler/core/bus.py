"""Address buses: a port-IO bus (64 KiB) and an MMIO bus (64-bit), one class for both.

A bus maps half-open ranges to devices. A device sees offsets into its own range, never absolute
addresses (``Device.read(offset, size)`` / ``Device.write(offset, size, value)``).

Rules decided here, once, for every device:

- **Unmapped**: a read that hits no region returns all ones; a write is dropped. Both are counted per
  address in ``Bus.unmapped`` and logged once per address (never per access).
- **Straddling**: an access that starts inside a region but ends past it is *not* split: it is
  treated exactly like an unmapped access (all ones / dropped) and counted in ``Bus.straddled``.
  This is Broiler's rule (spec §2.3) and vm-device's ``check_access``; it never reaches the device.
- **Overlap**: registering a range that overlaps another raises ``OverlapError`` naming both owners.
- **Move**: ``move(region, new_base)`` puts a region's device at a new base (a PCI BAR the guest
  reprogrammed) as one step: the same checks as ``register``, and on refusal the region stays put.

Lookup is a dict hit on the exact address for addresses seen before, else a bisect over the sorted
region starts (O(log n)); the cache is cleared (never replaced) whenever the map changes.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError, OverlapError
from .state import load_fields, save_fields

log = logging.getLogger("broiler.core.bus")

_perf_ns = time.perf_counter_ns
TIME_EVERY = 16  # Region: time one handler call in this many (the first access is always timed)


def all_ones(size: int) -> int:
    """What a ``size``-byte read of nothing returns (0xFF for a byte...); also the mask of a ``size``-byte value."""
    return (1 << (8 * size)) - 1


ERROR_KINDS_LOGGED = 64  # distinct guest-error messages logged per device; the rest are only counted


class Device:
    """A register block. Subclass and override ``read``/``write``; the defaults model nothing.

    ``offset`` is relative to the region the device was registered at; ``size`` is 1, 2, 4 or 8;
    ``value`` is the little-endian integer the guest wrote. A device never raises for guest
    behaviour: it answers (all ones for reads it does not model) and counts the oddity with
    ``guest_error``.
    """

    name: str = "device"
    # What a snapshot saves (core/state.py): register attribute names, () for none; None = not declared
    # (a user's device: saved as stateless and reported so).
    state_fields: ClassVar[tuple[str, ...] | None] = None

    def __init__(self) -> None:
        self.guest_errors = 0
        self._errors_logged: set[str] = set()

    def save_state(self) -> dict[str, Any]:
        """This device's registers for a snapshot (JSON-able; bytes allowed)."""
        return save_fields(self, self.state_fields or ())

    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what ``save_state`` returned; SnapshotError if it does not fit this device."""
        load_fields(self, self.state_fields or (), state, self.name)

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        return None

    def coalesced_write(self, offset: int, size: int, value: int) -> None:
        """A write KVM queued in the coalesced ring, replayed now. Same as ``write`` unless a proxy
        (tracing) needs to tell them apart."""
        self.write(offset, size, value)

    def guest_error(self, what: str) -> None:
        """Count a guest mistake (bad size, read-only register...), logging each kind once.

        Messages name offsets and sometimes values, so a guest could make "kinds" without end: after
        ERROR_KINDS_LOGGED of them further ones are only counted (bounded memory, no log flood)."""
        self.guest_errors += 1
        if what not in self._errors_logged and len(self._errors_logged) < ERROR_KINDS_LOGGED:
            self._errors_logged.add(what)
            log.info("%s: guest error: %s (further ones counted, not logged)", self.name, what)


@dataclass(slots=True)
class IoStats:
    """Per-region counters, kept on every access (two clock reads and three adds)."""

    reads: int = 0
    writes: int = 0
    ns: int = 0
    coalesced: int = 0  # writes KVM queued in the coalesced ring (no exit), replayed later
    timed: int = 0  # accesses whose handler time is in ``ns`` and ``hist`` (one in TIME_EVERY)
    countdown: int = 1  # accesses until the next timed one
    # hist[b]: handler calls that took [2**(b-1), 2**b) ns; enough for a p99 within a factor of 2.
    hist: list[int] = field(default_factory=lambda: [0] * 64)

    def percentile_ns(self, fraction: float) -> int:
        """Upper bound of the bucket holding the given fraction of handler times (0 if none)."""
        total = sum(self.hist)
        if not total:
            return 0
        seen = 0
        for bucket, n in enumerate(self.hist):
            seen += n
            if seen >= fraction * total:
                return 1 << bucket
        return 1 << 63

    @property
    def count(self) -> int:
        return self.reads + self.writes


@dataclass(slots=True, eq=False)
class Region:
    bus: Bus
    base: int
    size: int
    device: Device
    owner: Hashable
    name: str
    stats: IoStats = field(default_factory=IoStats)
    end: int = 0
    inner: Device | None = None  # the device itself when ``device`` is a wrapper (tracing); None: the same

    def __post_init__(self) -> None:
        self.end = self.base + self.size

    # Counts are exact; handler time is sampled: one access in TIME_EVERY is timed (two clock reads and
    # a histogram bucket cost ~0.3 µs here, 4 % of a whole sync exit). mean = ns / timed, p99 from hist.
    def read(self, addr: int, size: int) -> int:
        if addr + size > self.end:
            return self.bus.straddle(addr, size, False)
        st = self.stats
        st.reads += 1
        st.countdown -= 1
        if st.countdown:
            return self.device.read(addr - self.base, size)
        st.countdown = TIME_EVERY
        t0 = _perf_ns()
        value = self.device.read(addr - self.base, size)
        dt = _perf_ns() - t0
        st.ns += dt
        st.hist[dt.bit_length()] += 1
        st.timed += 1
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        if addr + size > self.end:
            self.bus.straddle(addr, size, True)
            return
        st = self.stats
        st.writes += 1
        st.countdown -= 1
        if st.countdown:
            self.device.write(addr - self.base, size, value)
            return
        st.countdown = TIME_EVERY
        t0 = _perf_ns()
        self.device.write(addr - self.base, size, value)
        dt = _perf_ns() - t0
        st.ns += dt
        st.hist[dt.bit_length()] += 1
        st.timed += 1

    def replay(self, addr: int, size: int, value: int) -> None:
        """A write taken from the coalesced ring: it did not cause an exit, so it is counted apart."""
        if addr + size > self.end:
            self.bus.straddle(addr, size, True)
            return
        self.device.coalesced_write(addr - self.base, size, value)
        self.stats.coalesced += 1


class _Unmapped:
    """The region every unmapped address resolves to: reads all ones, writes dropped, counted."""

    __slots__ = ("bus",)

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def read(self, addr: int, size: int) -> int:
        self.bus.note_unmapped(addr, size, False)
        return all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        self.bus.note_unmapped(addr, size, True)

    replay = write


_CACHE_LIMIT = 1 << 16
ADDRESS_LIMIT = 256  # distinct addresses counted (and logged once) per bus and kind of bad access


def _count_at(counts: Counter[tuple[int, bool]], key: tuple[int, bool]) -> bool:
    """Count one access at ``key`` if it is already known or there is room; False when it was not."""
    if key in counts or len(counts) < ADDRESS_LIMIT:
        counts[key] += 1
        return True
    return False


class Bus:
    """One address space (``limit`` = 1 << 16 for ports, 1 << 64 for MMIO)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._regions: list[Region] = []
        self._unmapped: _Unmapped | Any = _Unmapped(self)
        # addr -> Region or the unmapped sentinel, read lock-free by vCPU threads; the compiled loop holds it
        self.cache: dict[int, Region | _Unmapped] = {}
        self._generation = 0  # bumped by every map change; see resolve
        # Per (address, is_write) counts for the first ADDRESS_LIMIT addresses seen, plus totals: a guest
        # sweeping unmapped space must not grow broiler's memory (issue 13).
        self.unmapped: Counter[tuple[int, bool]] = Counter()
        self.straddled: Counter[tuple[int, bool]] = Counter()
        self.unmapped_total = 0
        self.straddled_total = 0
        self.listeners: list[Callable[[], None]] = []
        # Set by tracing: wraps every device registered from then on (see broiler/frontend/trace.py).
        self.wrap_device: Callable[[Device, int, str], Device] | None = None

    # -- registration -----------------------------------------------------------------------
    def register(
        self, base: int, size: int, device: Device, *, owner: Hashable | None = None, name: str | None = None
    ) -> Region:
        self._check_range(base, size, name or device.name)
        shown = device if self.wrap_device is None else self.wrap_device(device, base, name or device.name)
        region = Region(self, base, size, shown, owner if owner is not None else device, name or device.name)
        region.inner = device
        with self._lock:
            neighbour = self._overlapping(base, region.end)
            if neighbour is not None:
                raise OverlapError(
                    f"{self.name}: {region.name} [{base:#x}, {region.end:#x}) overlaps "
                    f"{neighbour.name} [{neighbour.base:#x}, {neighbour.end:#x})"
                )
            i = bisect.bisect_right(self._starts, base)
            self._starts.insert(i, base)
            self._regions.insert(i, region)
            self.forget()
        self._changed()
        return region

    def _check_range(self, base: int, size: int, name: str) -> None:
        if size <= 0:
            raise ConfigError(f"{self.name}: {name}: empty range at {base:#x}")
        if base < 0 or base + size > self.limit:
            raise ConfigError(
                f"{self.name}: {name}: range [{base:#x}, {base + size:#x}) is outside the bus (limit {self.limit:#x})"
            )

    def _overlapping(self, base: int, end: int, ignore: Region | None = None) -> Region | None:
        """A region [base, end) would overlap (``ignore`` aside), else None. The map is sorted and
        disjoint, so only the neighbours of the insertion point can overlap; two on each side cover
        the one ``ignore`` may hide."""
        i = bisect.bisect_right(self._starts, base)
        for neighbour in self._regions[max(0, i - 2) : i + 2]:
            if neighbour is not ignore and neighbour.base < end and base < neighbour.end:
                return neighbour
        return None

    def move(self, region: Region, new_base: int) -> Region:
        """Put ``region``'s device at ``new_base``; returns the region now in the map.

        A new ``Region`` replaces the old one (same device, owner, name and statistics) rather than
        editing it in place: a vCPU thread that looked the old one up a moment ago still computes
        offsets from the base it found. Raises ``OverlapError``/``ConfigError`` and leaves ``region``
        where it was if the new range is refused.
        """
        self._check_range(new_base, region.size, region.name)
        inner = region.inner or region.device
        # A wrapper (tracing) knows the base it was made for: wrap the device again at its new base.
        shown = inner if self.wrap_device is None else self.wrap_device(inner, new_base, region.name)
        moved = Region(self, new_base, region.size, shown, region.owner, region.name, region.stats, inner=inner)
        with self._lock:
            other = self._overlapping(new_base, moved.end, ignore=region)
            if other is not None:
                raise OverlapError(
                    f"{self.name}: {region.name} [{new_base:#x}, {moved.end:#x}) overlaps "
                    f"{other.name} [{other.base:#x}, {other.end:#x})"
                )
            i = self._regions.index(region)
            del self._starts[i]
            del self._regions[i]
            j = bisect.bisect_right(self._starts, new_base)
            self._starts.insert(j, new_base)
            self._regions.insert(j, moved)
            self.forget()
        self._changed()
        return moved

    def unregister(self, region: Region) -> None:
        with self._lock:
            i = self._regions.index(region)
            del self._starts[i]
            del self._regions[i]
            self.forget()
        self._changed()

    def unregister_owner(self, owner: Hashable) -> int:
        """Remove every region of ``owner``; returns how many went."""
        mine = [r for r in self._regions if r.owner == owner]
        for r in mine:
            self.unregister(r)
        return len(mine)

    def forget(self) -> None:
        """Drop every cached lookup (the map changed), in place: loops hold the dict itself."""
        self._generation += 1
        self.cache.clear()

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # -- lookup and access ------------------------------------------------------------------
    def regions(self) -> list[Region]:
        return list(self._regions)

    def find(self, addr: int) -> Region | None:
        """The region containing ``addr``, if any."""
        regions = self._regions
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < regions[i].end:
            return regions[i]
        return None

    def resolve(self, addr: int) -> Region | _Unmapped:
        """What an access at ``addr`` reaches (cached); the vCPU loop's lookup."""
        generation = self._generation
        target: Region | _Unmapped = self.find(addr) or self._unmapped
        cache = self.cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        if generation == self._generation:  # the map changed meanwhile (another thread): don't cache a stale answer
            cache[addr] = target
        return target

    def read(self, addr: int, size: int) -> int:
        return (self.cache.get(addr) or self.resolve(addr)).read(addr, size)

    def write(self, addr: int, size: int, value: int) -> None:
        (self.cache.get(addr) or self.resolve(addr)).write(addr, size, value)

    def replay(self, addr: int, size: int, value: int) -> None:
        (self.cache.get(addr) or self.resolve(addr)).replay(addr, size, value)

    # -- bookkeeping for bad accesses ------------------------------------------------------
    def note_unmapped(self, addr: int, size: int, is_write: bool) -> None:
        self.unmapped_total += 1
        if not _count_at(self.unmapped, (addr, is_write)):
            return
        if self.unmapped[(addr, is_write)] == 1:
            what, fate = ("write", "dropped") if is_write else ("read", "reads all ones")
            log.info("%s: unmapped %s of %d bytes at %#x (%s)", self.name, what, size, addr, fate)

    def straddle(self, addr: int, size: int, is_write: bool) -> int:
        self.straddled_total += 1
        if not _count_at(self.straddled, (addr, is_write)):
            return all_ones(size)
        if self.straddled[(addr, is_write)] == 1:
            what = "write" if is_write else "read"
            log.info(
                "%s: %d-byte %s at %#x crosses the end of its region: treated as unmapped", self.name, size, what, addr
            )
        return all_ones(size)


class PioBus(Bus):
    def __init__(self) -> None:
        super().__init__("pio", 1 << 16)


class MmioBus(Bus):
    def __init__(self) -> None:
        super().__init__("mmio", 1 << 64)
