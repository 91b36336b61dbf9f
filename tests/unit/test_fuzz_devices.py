"""A device-model fuzzer without KVM: random guest accesses against every platform device (issue 13).

Each example builds the whole platform (``tests/unit/fuzz_rig.py``) and plays a random sequence of
what a hostile guest can do: reads and writes of 1, 2, 4 or 8 bytes anywhere in and around every
registered region (misaligned, straddling the end, unmapped), PCI configuration through CF8/CFC and
ECAM (BARs, COMMAND, MSI/MSI-X capabilities), DMA requests with random addresses, and virtqueues
whose rings and descriptors are random. Then it checks, after every step:

- no exception escapes a bus access, a doorbell or a timer (a device never raises over the guest);
  no ``broiler.*`` ERROR record and no thread dies (a worker catching a bug counts as a failure);
- read-only registers are intact: every PCI function's IDs, class, header type, subsystem, interrupt
  pin, capability chain and BAR type/size bits; the sync demos' MIN_FREQ/MAX_FREQ;
- nothing reached host memory outside guest RAM (``SpyMemory``), and timers stay bounded.

CI runs a fixed number of examples; ``BROILER_FUZZ_EXAMPLES=N`` runs N per test (docs/security.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broiler.core.bus import ERROR_KINDS_LOGGED, Device, Region, all_ones
from broiler.core.memory import PCI_ECAM_BASE
from broiler.devices.demo.pci_dma import DmaDemo
from broiler.devices.demo.sync_demo import MAX_FREQ, MIN_FREQ, RESET_VALUES
from broiler.devices.virtio import legacy, modern
from broiler.devices.virtio.pci import LEGACY_BAR, MODERN_BAR, VirtioPci
from broiler.devices.virtio.queue import legacy_layout
from broiler.pci import PciFunction
from broiler.pci.config import BAR0, CAPABILITY_LIST, HEADER_TYPE, INTERRUPT_PIN, SUBSYSTEM_VENDOR_ID
from tests.unit.fuzz_rig import RAM_SIZE, ErrorLog, FuzzMachine, scratch_disk
from tests.unit.pci_fakes import conf1_address

EXAMPLES = int(os.environ.get("BROILER_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DISK = scratch_disk()


def _layout() -> tuple[list[tuple[bool, int, int]], list[int], list[int], list[int]]:
    """(pio?, base, size) of every region at reset, the DMA demos' slots, virtio slots, all slots."""
    m = FuzzMachine(DISK)
    try:
        assert m.pci is not None
        regions = [(True, r.base, r.size) for r in m.pio_bus.regions()]
        regions += [(False, r.base, r.size) for r in m.mmio_bus.regions()]
        functions = m.pci.functions
        dma = [s for s, fn in functions.items() if isinstance(fn, DmaDemo)]
        virtio = [s for s, fn in functions.items() if isinstance(fn, VirtioPci)]
        return regions, dma, virtio, sorted(functions)
    finally:
        m.close()


REGIONS, DMA_SLOTS, VIRTIO_SLOTS, SLOTS = _layout()

# -- values a guest would pick to hurt: edges of RAM, of 32 bits, of every size ----------------------
EDGES = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 63]
EDGES += [RAM_SIZE - 1, RAM_SIZE - 2, RAM_SIZE - 16, RAM_SIZE, RAM_SIZE + 1, all_ones(8)]
HEADER_REGISTERS = [0, 1, 2, 3, 4, 5, 6, 8, 9, 0xA, 0xB, 0xE, 0x2C, 0x2E, 0x30, 0x34, 0x3C, 0x3D]
HEADER_REGISTERS += [BAR0 + 4 * i for i in range(6)] + [BAR0 + 4 * i + 1 for i in range(6)]
values = st.one_of(st.sampled_from(EDGES), st.integers(0, 0x2000), st.integers(0, all_ones(8)))
ram_addresses = st.one_of(st.sampled_from(EDGES), st.integers(0, RAM_SIZE + 0x1000), st.integers(0, all_ones(4)))
sizes = st.sampled_from([1, 2, 4, 8])


@st.composite
def bus_access(draw: st.DrawFn) -> tuple[object, ...]:
    """A read or write in or around a region (offsets -8..size+8), or anywhere on either bus."""
    if draw(st.integers(0, 9)) == 0:
        pio = draw(st.booleans())
        addr = draw(st.integers(0, 0xFFFF)) if pio else draw(st.integers(0xC000_0000, 0xFFFF_FFFF))
    else:
        pio, base, size = draw(st.sampled_from(REGIONS))
        inside = st.integers(0, min(size, 0x40) - 1)  # where the registers are, most of the time
        offset = draw(st.one_of(inside, inside, st.integers(-8, min(size, 0x400) + 8), st.integers(size - 8, size + 8)))
        addr = max(0, base + offset)
    return ("io", pio, addr, draw(sizes), draw(values), draw(st.booleans()))


@st.composite
def config_access(draw: st.DrawFn) -> tuple[object, ...]:
    """A configuration access by CF8/CFC or ECAM: mostly to present functions, any register."""
    slot = draw(st.one_of(st.sampled_from(SLOTS), st.integers(0, 31)))
    reg = draw(st.one_of(st.sampled_from(HEADER_REGISTERS), st.integers(0, 0x40), st.integers(0, 0x103)))
    fn = draw(st.integers(0, 7)) // 7  # function 0, now and then 1 (absent)
    value = draw(st.one_of(st.just(0xFFFF_FFFF), values))  # all ones: BAR sizing, as enumeration does
    return ("cfg", slot, fn, reg, draw(sizes), value, draw(st.booleans()), draw(st.booleans()))


@st.composite
def dma_request(draw: st.DrawFn) -> tuple[object, ...]:
    direction = draw(st.sampled_from([0, 1, 0, 1, 2, 0xFFFF_FFFF]))
    device_offset = draw(st.one_of(st.integers(0, 0x1000), st.integers(0, 1 << 20), ram_addresses))
    guest = draw(st.one_of(st.integers(RAM_SIZE - 0x2000, RAM_SIZE + 0x10), ram_addresses))
    length = draw(st.one_of(st.integers(0, 0x2000), values))
    src, dst = (device_offset, guest) if direction == 0 else (guest, device_offset)
    return ("dma", draw(st.sampled_from(DMA_SLOTS)), [src, dst, direction, length])


@st.composite
def virtqueue(draw: st.DrawFn) -> tuple[object, ...]:
    """A queue set up by the driver with random size and rings, random descriptors, then a kick."""
    size = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 0xFFFF]))
    rings = [draw(st.one_of(st.sampled_from([0x10000, 0x20000, 0x30000]), ram_addresses)) for _ in range(3)]
    descs = draw(
        st.lists(
            st.tuples(ram_addresses, st.integers(0, all_ones(4)), st.integers(0, 7), st.integers(0, 20)), max_size=8
        )
    )
    avail = draw(st.lists(st.integers(0, 20), max_size=8))
    avail_idx = draw(st.one_of(st.integers(0, 10), st.integers(0, 0xFFFF)))
    return ("vq", draw(st.sampled_from(VIRTIO_SLOTS)), size, rings, descs, avail, avail_idx)


steps = st.lists(st.one_of(bus_access(), config_access(), dma_request(), virtqueue(), st.just(("tick",))), max_size=40)


# -- the invariants -----------------------------------------------------------------------------------
def read_only_view(fn: PciFunction) -> list[int]:
    """What a guest must never change: header IDs and pointers, the capability chain, BAR type/size bits."""
    cfg = fn.config
    fixed = [cfg.get(0, 4), cfg.get(8, 4), cfg.get(HEADER_TYPE, 1), cfg.get(SUBSYSTEM_VENDOR_ID, 4)]
    fixed += [cfg.get(CAPABILITY_LIST, 1), cfg.get(INTERRUPT_PIN, 1)]
    fixed += [cfg.get(at, 2) for at, _ in cfg.capabilities()]
    for index in range(6):
        bar = fn.bars.get(index)
        raw = cfg.get(BAR0 + 4 * index, 4)
        # Unimplemented BARs read 0; an implemented one keeps its type bits and its size's zero bits.
        fixed.append(raw if bar is None else raw & ~bar.address_mask & 0xFFFF_FFFF)
    return fixed


def read_only_state(m: FuzzMachine) -> dict[str, object]:
    assert m.pci is not None
    state: dict[str, object] = {f"{slot}": read_only_view(fn) for slot, fn in m.pci.functions.items()}
    for name, region in _sync_regions(m):
        state[name] = [region.device.read(reg, 4) for reg in (MIN_FREQ, MAX_FREQ)]
    return state


def _sync_regions(m: FuzzMachine) -> Iterator[tuple[str, Region]]:
    for bus in (m.pio_bus, m.mmio_bus):
        for region in bus.regions():
            if region.name.startswith("sync-") and region.size == 0x10:
                yield region.name, region


@contextmanager
def platform() -> Iterator[tuple[FuzzMachine, ErrorLog]]:
    with ErrorLog() as errors:
        m = FuzzMachine(DISK)
        try:
            yield m, errors
        finally:
            m.close()
    assert not errors.problems, errors.problems


def check(m: FuzzMachine, before: dict[str, object]) -> None:
    assert not m.memory.escapes, f"accesses outside guest RAM: {m.memory.escapes[:4]}"
    assert read_only_state(m) == before, "a read-only register changed"
    for device in _devices(m):  # "logged once per kind" must not become one entry per value written
        assert len(device._errors_logged) <= ERROR_KINDS_LOGGED, (device.name, sorted(device._errors_logged)[:5])


def _devices(m: FuzzMachine) -> Iterator[Device]:
    assert m.pci is not None
    for bus in (m.pio_bus, m.mmio_bus):
        yield from (r.device for r in bus.regions())
    for fn in m.pci.functions.values():
        yield fn
        yield from (bar.device for bar in fn.bars.values())


# -- playing the steps ---------------------------------------------------------------------------------
def play(m: FuzzMachine, step: tuple[object, ...]) -> None:
    kind = step[0]
    if kind == "io":
        _, pio, addr, size, value, is_write = step
        assert isinstance(addr, int) and isinstance(size, int) and isinstance(value, int)
        if is_write:
            m.guest_write(bool(pio), addr, size, value & all_ones(size))
        else:
            m.guest_read(bool(pio), addr, size)
    elif kind == "cfg":
        _, slot, fn, reg, size, value, ecam, is_write = step
        assert isinstance(slot, int) and isinstance(fn, int) and isinstance(reg, int) and isinstance(size, int)
        assert isinstance(value, int)
        config_io(m, slot, fn, reg, size, value & all_ones(size) if is_write else None, ecam=bool(ecam))
    elif kind == "dma":
        _, slot, regs = step
        assert isinstance(slot, int) and isinstance(regs, list)
        program_dma(m, slot, regs)
    elif kind == "vq":
        play_virtqueue(m, *step[1:])  # type: ignore[arg-type]
    else:
        m.run_timers()


def config_io(m: FuzzMachine, slot: int, fn: int, reg: int, size: int, value: int | None, *, ecam: bool) -> None:
    if ecam:
        addr = PCI_ECAM_BASE + (slot << 15 | fn << 12 | reg)
        if value is None:
            m.guest_read(False, addr, size)
        else:
            m.guest_write(False, addr, size, value)
        return
    m.guest_write(True, 0xCF8, 4, conf1_address(slot, reg, fn=fn))
    if value is None:
        m.guest_read(True, 0xCFC + (reg & 3), size)
    else:
        m.guest_write(True, 0xCFC + (reg & 3), size, value)


def program_dma(m: FuzzMachine, slot: int, regs: list[int]) -> None:
    """SRC, DST, DIR, LEN, then the doorbell, where the guest finds BAR0 now (if it decodes)."""
    assert m.pci is not None
    base = m.pci.functions[slot].bars[0].mapped
    if base is None:
        return
    for i, value in enumerate(regs):
        m.guest_write(True, base + 4 * i, 4, value & 0xFFFF_FFFF)
    m.guest_write(True, base + 0x10, 2, 1)


def play_virtqueue(
    m: FuzzMachine, slot: int, size: int, rings: list[int], descs: list[tuple[int, int, int, int]], avail: list[int],
    avail_idx: int,
) -> None:  # fmt: skip
    assert m.pci is not None
    fn = m.pci.functions[slot]
    modern_base = fn.bars[MODERN_BAR].mapped if MODERN_BAR in fn.bars else None
    legacy_base = fn.bars[LEGACY_BAR].mapped if LEGACY_BAR in fn.bars else None
    if modern_base is None and legacy_base is not None:  # a legacy ring: one page number, a fixed size
        size = m.guest_read(True, legacy_base + legacy.QUEUE_SIZE, 2)
        rings = list(legacy_layout((rings[0] >> 12) & 0xFFFF_FFFF, size))
    for i, (addr, length, flags, nxt) in enumerate(descs):
        _poke(m, rings[0] + 16 * i, struct.pack("<QIHH", addr & all_ones(8), length, flags, nxt))
    _poke(m, rings[1], struct.pack("<HH", 0, avail_idx) + b"".join(struct.pack("<H", e) for e in avail))
    if modern_base is not None:
        _start_modern(m, modern_base, size, rings)
        m.guest_write(False, modern_base + modern.notify_offset(0), 2, 0)
    elif legacy_base is not None:
        m.guest_write(True, legacy_base + legacy.STATUS, 1, 0)
        m.guest_write(True, legacy_base + legacy.QUEUE_SELECT, 2, 0)
        m.guest_write(True, legacy_base + legacy.QUEUE_PFN, 4, rings[0] >> 12)
        m.guest_write(True, legacy_base + legacy.STATUS, 1, 0x7)
        m.guest_write(True, legacy_base + legacy.QUEUE_NOTIFY, 2, 0)


def _start_modern(m: FuzzMachine, base: int, size: int, rings: list[int]) -> None:
    """The driver's start-up sequence through the common configuration (virtio 1.2 §3.1.1)."""
    write = m.guest_write
    write(False, base + 0x14, 1, 0)  # reset
    write(False, base + 0x14, 1, 0x3)
    write(False, base + 0x08, 4, 1)
    write(False, base + 0x0C, 4, 1)  # VERSION_1
    write(False, base + 0x14, 1, 0xB)
    write(False, base + 0x16, 2, 0)
    write(False, base + 0x18, 2, size & 0xFFFF)
    for off, addr in zip((0x20, 0x28, 0x30), rings, strict=True):
        write(False, base + off, 4, addr & 0xFFFF_FFFF)
        write(False, base + off + 4, 4, addr >> 32 & 0xFFFF_FFFF)
    write(False, base + 0x1C, 2, 1)
    write(False, base + 0x14, 1, 0xF)


def _poke(m: FuzzMachine, gpa: int, data: bytes) -> None:
    """The guest driver writing its rings (only where it has RAM, as a real driver would)."""
    if m.memory.contains(gpa, len(data)):
        m.memory.write(gpa, data)


# -- the tests -------------------------------------------------------------------------------------------
@FUZZ
@given(steps)
def test_random_guest_accesses_keep_every_invariant(plan: list[tuple[object, ...]]) -> None:
    with platform() as (m, _):
        before = read_only_state(m)
        for step in plan:
            play(m, step)
            check(m, before)
        m.run_timers()
        m.close()  # stops the block worker: what it did is now in the spy
        check(m, before)


FAMILIES = {"io": bus_access(), "cfg": config_access(), "dma": dma_request(), "vq": virtqueue()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@FUZZ
@given(data=st.data())
def test_each_kind_of_step_alone(family: str, data: st.DataObject) -> None:
    """One kind of step per example, so each gets its share of examples (mixed plans are short)."""
    plan = data.draw(st.lists(FAMILIES[family], min_size=1, max_size=30))
    with platform() as (m, _):
        before = read_only_state(m)
        for step in plan:
            play(m, step)
            m.run_timers()
            check(m, before)
        m.close()
        check(m, before)


def test_every_offset_and_size_of_every_region() -> None:
    """Exhaustive where Hypothesis samples: each region's first 64 bytes and one past its end, each
    size, read then write of a value that sets every bit (and, for PCI, every header register)."""
    with platform() as (m, _):
        before = read_only_state(m)
        for pio, base, size in REGIONS:
            for offset in [*range(-1, min(size, 0x40) + 1), size - 1, size]:
                for width in (1, 2, 4, 8):
                    play(m, ("io", pio, max(0, base + offset), width, 0, False))
                    play(m, ("io", pio, max(0, base + offset), width, all_ones(8), True))
        for slot in SLOTS:
            for reg in range(0, 0x104):
                for width in (1, 2, 4):
                    play(m, ("cfg", slot, 0, reg, width, all_ones(4), reg % 2 == 0, True))
        check(m, before)
        m.run_timers()
        check(m, before)


def test_guest_error_kinds_stay_bounded() -> None:
    """A guest writing a new value each time to a register that names the value in its complaint."""
    with platform() as (m, _):
        before = read_only_state(m)
        io = m.pci.functions[VIRTIO_SLOTS[-1]].bars[LEGACY_BAR].mapped if m.pci else None
        assert io is not None
        for value in range(4 * ERROR_KINDS_LOGGED):
            m.guest_write(True, io + legacy.QUEUE_SIZE, 2, value)  # read-only in the legacy layout
        check(m, before)


def test_the_layout_covers_every_device_family() -> None:
    """The fuzzer meets every family: legacy, demo, testdev, PCI config and virtio (if one were left
    out of the platform, this names it)."""
    names = set(_region_names())
    legacy_ = {"ttyS0", "i8042 data", "i8042 command", "rtc-cmos", "acpi-pm", "bochs-shutdown", "debug-exit", "port92"}
    demos = {"sync-pio", "sync-mmio", "async-pio", "async-mmio", "vpic", "vioapic", "coalesced-log", "dma-buf BAR0"}
    testdevs = {"fw_cfg", "pc-testdev-ioport", "pc-testdev-iomem", "pci-testdev BAR0"}
    virtio = {"virtio-blk0 BAR0", "virtio-blk0 BAR4", "virtio-rng BAR0", "virtio-rng BAR1", "virtio-rng BAR4"}
    assert legacy_ | demos | testdevs | virtio | {"pci-conf1", "pci-ecam"} <= names
    assert len(DMA_SLOTS) == 4 and len(VIRTIO_SLOTS) == 4


def test_the_steps_reach_guest_memory() -> None:
    """A well-formed DMA request and a well-formed virtqueue really touch RAM through the spy, so the
    random ones exercise the same paths (the fuzzer is not playing against closed doors)."""
    with platform() as (m, _):
        before = m.memory.accesses
        play(m, ("dma", DMA_SLOTS[-1], [0, 0x200000, 0, 64]))  # dma-buf: 64 bytes to RAM, no delay
        m.run_timers()
        assert m.memory.accesses > before
        before = m.memory.accesses
        rings = [0x10000, 0x20000, 0x30000]
        for slot, buffer in zip(VIRTIO_SLOTS[-2:], (0x100000, 0x200000), strict=True):  # modern, legacy rng
            before = m.memory.accesses
            play(m, ("vq", slot, 8, rings, [(buffer, 16, 2, 0)], [0], 1))  # one writable buffer
            m.run_timers()
            assert m.memory.accesses > before and m.memory.read(buffer, 16) == b"\xa5" * 16
        check(m, read_only_state(m))


def _region_names() -> Iterator[str]:
    m = FuzzMachine(DISK)
    try:
        for bus in (m.pio_bus, m.mmio_bus):
            yield from (r.name for r in bus.regions())
    finally:
        m.close()


def test_sync_demo_read_only_values_are_the_documented_ones() -> None:
    m = FuzzMachine(DISK)
    try:
        state = read_only_state(m)
        assert state["sync-pio"] == [RESET_VALUES[MIN_FREQ], RESET_VALUES[MAX_FREQ]]
    finally:
        m.close()
