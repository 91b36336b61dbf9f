from __future__ import annotations

import pytest

from broiler.core.bus import Bus, Device, MmioBus, PioBus, Region, all_ones
from broiler.errors import ConfigError, OverlapError


class Recorder(Device):
    name = "rec"

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return 0x1122334455667788 & all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_device_sees_offsets_and_values() -> None:
    bus = PioBus()
    dev = Recorder()
    bus.register(0x100, 0x10, dev)
    assert bus.read(0x104, 2) == 0x7788
    bus.write(0x10F, 1, 0xAB)
    assert dev.log == [("r", 4, 2), ("w", 0xF, 1, 0xAB)]


@pytest.mark.parametrize("size, expected", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF), (8, (1 << 64) - 1)])
def test_unmapped_reads_all_ones_and_is_counted_per_address(size: int, expected: int) -> None:
    bus = MmioBus()
    assert bus.read(0xD000_0800, size) == expected
    bus.read(0xD000_0800, size)
    bus.write(0xD000_0800, size, 1)
    assert bus.unmapped[(0xD000_0800, False)] == 2
    assert bus.unmapped[(0xD000_0800, True)] == 1


def test_unmapped_is_logged_once_per_address(caplog: pytest.LogCaptureFixture) -> None:
    bus = PioBus()
    caplog.set_level("INFO", logger="broiler.core.bus")
    for _ in range(100):
        bus.read(0x7F00, 1)
    assert len([r for r in caplog.records if "unmapped" in r.message]) == 1


def test_straddling_access_never_reaches_the_device() -> None:
    bus = PioBus()
    dev = Recorder()
    bus.register(0x100, 0x10, dev)
    assert bus.read(0x10E, 4) == 0xFFFFFFFF
    bus.write(0x10E, 4, 5)
    assert dev.log == []
    assert bus.straddled[(0x10E, False)] == 1 and bus.straddled[(0x10E, True)] == 1


def test_overlap_is_refused_naming_both_owners() -> None:
    bus = PioBus()
    a, b = Recorder(), Recorder()
    a.name, b.name = "alpha", "beta"
    bus.register(0x100, 0x10, a)
    with pytest.raises(OverlapError, match="beta.*overlaps alpha"):
        bus.register(0x108, 0x10, b)
    with pytest.raises(OverlapError):
        bus.register(0x0F0, 0x20, b)  # covers alpha entirely
    bus.register(0x110, 0x10, b)  # adjacent is fine


@pytest.mark.parametrize("base, size", [(0x100, 0), (0xFFFF, 2), (-1, 4)])
def test_bad_ranges_are_refused(base: int, size: int) -> None:
    with pytest.raises(ConfigError):
        PioBus().register(base, size, Device())


def test_unregister_by_owner_and_cache_invalidation() -> None:
    bus = MmioBus()
    dev = Recorder()
    bus.register(0x1000, 0x100, dev, owner="bar0")
    assert bus.read(0x1000, 4) == 0x55667788
    assert bus.unregister_owner("bar0") == 1
    assert bus.read(0x1000, 4) == 0xFFFFFFFF  # the cached entry went with the region
    bus.register(0x2000, 0x100, dev, owner="bar0")
    assert bus.read(0x2000, 1) == 0x88


def test_lookup_with_many_regions() -> None:
    bus: Bus = PioBus()
    devices = [Recorder() for _ in range(200)]
    for i, d in enumerate(devices):
        bus.register(i * 0x10, 8, d)
    for i, d in enumerate(devices):
        assert bus.find(i * 0x10 + 7) is not None and bus.find(i * 0x10 + 7).device is d  # type: ignore[union-attr]
        assert bus.find(i * 0x10 + 8) is None


def test_stats_count_reads_writes_and_time() -> None:
    bus = PioBus()
    region = bus.register(0x100, 4, Recorder())
    bus.read(0x100, 1)
    bus.write(0x100, 1, 0)
    bus.write(0x101, 1, 0)
    assert (region.stats.reads, region.stats.writes) == (1, 2)
    assert region.stats.ns > 0


def test_move_keeps_device_name_and_counters_and_frees_the_old_range() -> None:
    bus = PioBus()
    dev = Recorder()
    region = bus.register(0x6200, 0x10, dev, name="bar")
    bus.read(0x6204, 4)
    moved = bus.move(region, 0x9000)
    assert moved is not region and moved.device is region.device and moved.stats is region.stats
    assert (moved.base, moved.end, moved.name) == (0x9000, 0x9010, "bar")
    assert bus.find(0x6204) is None and bus.find(0x900F) is moved
    bus.read(0x6204, 4)
    assert bus.unmapped[(0x6204, False)] == 1 and moved.stats.reads == 1
    bus.read(0x9004, 4)
    assert moved.stats.reads == 2 and dev.log[-1] == ("r", 4, 4)  # offsets from the new base
    assert bus.move(moved, 0x9008).base == 0x9008  # overlapping only its own old range is fine


def test_move_onto_another_region_is_refused_and_leaves_the_region_in_place() -> None:
    bus = PioBus()
    a = bus.register(0x6200, 0x10, Device(), name="a")
    bus.register(0x6300, 0x10, Device(), name="b")
    bus.register(0x6400, 0x10, Device(), name="c")
    with pytest.raises(OverlapError, match="overlaps b"):
        bus.move(a, 0x62F8)
    with pytest.raises(OverlapError, match="overlaps c"):
        bus.move(a, 0x6408)
    with pytest.raises(ConfigError, match="outside the bus"):
        bus.move(a, 0xFFF8)
    assert bus.find(0x6200) is a and [r.name for r in bus.regions()] == ["a", "b", "c"]


def test_a_sweep_of_unmapped_space_keeps_bounded_counters() -> None:
    """A guest reading every address of a hole keeps a total, but per-address counts only up to a bound."""
    from broiler.core.bus import ADDRESS_LIMIT

    bus = MmioBus()
    for addr in range(0xE000_0000, 0xE000_0000 + 10 * ADDRESS_LIMIT):
        assert bus.read(addr, 1) == 0xFF
    assert bus.unmapped_total == 10 * ADDRESS_LIMIT
    assert len(bus.unmapped) == ADDRESS_LIMIT
    assert bus.unmapped[(0xE000_0000, False)] == 1  # the first ones are still counted per address
    assert bus.read(0xE000_0000, 1) == 0xFF and bus.unmapped[(0xE000_0000, False)] == 2
    assert len(bus.cache) <= 1 << 16


def test_a_traced_region_that_moves_is_traced_at_its_new_address() -> None:
    """--trace wraps devices with the base they sit at; a BAR move must not leave the old address in the trace."""
    import io
    import json

    from broiler.frontend.trace import Tracer

    out = io.StringIO()
    tracer = Tracer(frozenset({"mmio"}), out, as_json=True)
    bus = MmioBus()
    dev = Device()
    region = bus.register(0xC200_0000, 0x100, dev, name="bar0")
    tracer._wrap_bus("mmio", bus)
    moved = bus.move(bus.find(0xC200_0000) or region, 0xC210_0000)
    bus.read(0xC210_0004, 4)
    assert json.loads(out.getvalue().splitlines()[-1])["addr"] == 0xC210_0004
    assert (moved.inner or moved.device) is dev


def test_the_cache_dict_is_cleared_in_place_never_replaced() -> None:
    """The compiled exit loop takes ``bus.cache`` once per run() call: a map change must clear that very dict."""
    bus = PioBus()
    cache = bus.cache
    region = bus.register(0x100, 4, Device())
    bus.resolve(0x100)
    assert cache == {0x100: region}
    moved = bus.move(region, 0x200)
    assert bus.cache is cache and cache == {}
    bus.resolve(0x200)
    bus.unregister(moved)
    assert bus.cache is cache and cache == {}


def test_a_lookup_racing_a_map_change_is_not_cached() -> None:
    bus = PioBus()
    region = bus.register(0x100, 4, Device())
    real_find = bus.find

    def find_then_move(addr: int) -> Region | None:  # another thread moves the region mid-lookup
        found = real_find(addr)
        bus.move(region, 0x300)
        return found

    bus.find = find_then_move  # type: ignore[method-assign]
    assert bus.resolve(0x100) is region  # the answer of its moment...
    assert 0x100 not in bus.cache  # ...but not remembered: the next access looks again
