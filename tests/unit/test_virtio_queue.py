"""The split virtqueue: normal chains, indirect tables, used ring and interrupt suppression, and every
hostile ring a guest can build (each raises VirtqueueError; nothing outside RAM is touched)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broiler.devices.virtio.chain import Segment, slice_segments
from broiler.devices.virtio.queue import Virtqueue, VirtqueueError, legacy_layout, need_event
from broiler.devices.virtio.spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from tests.unit.virtio_driver import AVAIL_AT, DESC_AT, INDIRECT_AT, RAM, USED_AT, Buf, Driver, guest_ram


def make(size: int = 8, *, event_idx: bool = False, indirect: bool = True) -> tuple[Virtqueue, Driver]:
    mem = guest_ram()
    q = Virtqueue(256)
    drv = Driver(mem, q, size)
    q.activate(mem, event_idx=event_idx, indirect=indirect)
    return q, drv


def test_pop_chain_readable_then_writable() -> None:
    q, drv = make()
    head, addrs = drv.add([Buf(b"hello"), Buf(b"world!"), Buf(length=32, writable=True)])
    chain = q.pop()
    assert chain is not None and chain.head == head
    assert [s.length for s in chain.readable] == [5, 6] and chain.write_length == 32
    assert chain.read(drv.mem, 0, 100) == b"helloworld!"
    assert chain.read(drv.mem, 3, 4) == b"lowo"
    assert chain.write(drv.mem, 30, b"xyz") == 2  # clipped at the end of the writable space
    assert drv.mem.read(addrs[2] + 30, 2) == b"xy"
    assert q.pop() is None


def test_push_used_len_and_interrupt_without_event_idx() -> None:
    q, drv = make()
    head, _ = drv.add([Buf(length=16, writable=True)])
    chain = q.pop()
    assert chain is not None
    q.push(chain.head, 7)
    assert drv.used() == [(head, 7)]
    assert q.needs_interrupt() is True
    assert q.needs_interrupt() is False  # nothing new since
    drv.mem.write_int(AVAIL_AT, 2, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.add([Buf(b"x")])
    chain = q.pop()
    assert chain is not None
    q.push(chain.head, 0)
    assert q.needs_interrupt() is False


def test_event_idx_used_event_and_avail_event() -> None:
    q, drv = make(event_idx=True)
    drv.set_used_event(1)  # interrupt only once used idx passes 1
    for _ in range(3):
        drv.add([Buf(b"a")])
    results = []
    while (chain := q.pop()) is not None:
        q.push(chain.head, 0)
        results.append(q.needs_interrupt())
    assert results == [False, True, False]
    assert drv.avail_event() == 3  # the device asked for a kick at the next new entry


def test_need_event_wraps() -> None:
    assert need_event(0xFFFF, 0x0001, 0xFFFE)
    assert not need_event(5, 5, 4)  # used_event 5: interrupt once the used index moves past 5
    assert need_event(5, 6, 4)
    assert need_event(4, 5, 4)


def test_indirect_table() -> None:
    q, drv = make()
    head, _ = drv.add([Buf(b"hdr"), Buf(length=8, writable=True)], indirect=True)
    chain = q.pop()
    assert chain is not None and chain.head == head
    assert chain.read_length == 3 and chain.write_length == 8


def test_wraparound_of_indices() -> None:
    q, drv = make(size=4)
    for round_ in range(70000 // 4 // 100):  # enough pops to pass a few hundred entries
        for _ in range(4):
            drv.add([Buf(bytes([round_ & 0xFF]))])
        for _ in range(4):
            chain = q.pop()
            assert chain is not None
            q.push(chain.head, 0)
        assert len(drv.used()) == 4


def test_legacy_layout_aligns_used_ring() -> None:
    desc, avail, used = legacy_layout(0x10, 256)
    assert (desc, avail, used) == (0x10000, 0x11000, 0x12000)


def test_slice_segments() -> None:
    segs = [Segment(0x100, 4), Segment(0x200, 4)]
    assert slice_segments(segs, 2, 4) == [Segment(0x102, 2), Segment(0x200, 2)]
    assert slice_segments(segs, 8, 4) == []


# -- hostile guests ---------------------------------------------------------------------------


def raw_chain(drv: Driver, descs: list[tuple[int, int, int, int]], head: int = 0) -> None:
    for i, (addr, length, flags, nxt) in enumerate(descs):
        drv.write_desc(DESC_AT, i, addr, length, flags, nxt)
    drv.publish(head)


@pytest.mark.parametrize(
    "descs, why",
    [
        ([(0x100000, 4, DESC_F_NEXT, 1), (0x100010, 4, DESC_F_NEXT, 0)], "loops"),
        ([(0x100000, 4, DESC_F_NEXT, 0)], "loops"),  # a descriptor pointing at itself
        ([(0x100000, 4, DESC_F_NEXT, 8)], "outside a table"),  # next >= size
        ([(RAM - 2, 4, 0, 0)], "not inside guest RAM"),  # crosses the end of RAM
        ([(0xC000_0000, 4, 0, 0)], "not inside guest RAM"),  # the PCI hole
        ([(0x100000, 0xFFFF_FFFF, 0, 0)], "not inside guest RAM"),
        ([(0x100000, 4, DESC_F_WRITE | DESC_F_NEXT, 1), (0x100010, 4, 0, 0)], "readable buffer follows"),
        ([(INDIRECT_AT, 24, DESC_F_INDIRECT, 0)], "multiple of 16"),
        ([(INDIRECT_AT, 0, DESC_F_INDIRECT, 0)], "multiple of 16"),
        ([(INDIRECT_AT, 16 * 9, DESC_F_INDIRECT, 0)], "multiple of 16"),  # more entries than the queue
        ([(RAM - 16, 32, DESC_F_INDIRECT, 0)], "not inside guest RAM"),
        ([(INDIRECT_AT, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)], "NEXT"),
    ],
)
def test_hostile_chains_raise(descs: list[tuple[int, int, int, int]], why: str) -> None:
    q, drv = make()
    raw_chain(drv, descs)
    with pytest.raises(VirtqueueError, match=why):
        q.pop()


def test_nested_indirect_refused() -> None:
    q, drv = make()
    drv.write_desc(INDIRECT_AT, 0, INDIRECT_AT + 0x100, 16, DESC_F_INDIRECT, 0)
    raw_chain(drv, [(INDIRECT_AT, 16, DESC_F_INDIRECT, 0)])
    with pytest.raises(VirtqueueError, match="inside an indirect table"):
        q.pop()


def test_indirect_loop_refused() -> None:
    q, drv = make()
    drv.write_desc(INDIRECT_AT, 0, 0x100000, 4, DESC_F_NEXT, 1)
    drv.write_desc(INDIRECT_AT, 1, 0x100000, 4, DESC_F_NEXT, 0)
    raw_chain(drv, [(INDIRECT_AT, 32, DESC_F_INDIRECT, 0)])
    with pytest.raises(VirtqueueError, match="loops"):
        q.pop()


def test_indirect_without_feature_refused() -> None:
    q, drv = make(indirect=False)
    raw_chain(drv, [(INDIRECT_AT, 16, DESC_F_INDIRECT, 0)])
    with pytest.raises(VirtqueueError, match="INDIRECT_DESC"):
        q.pop()


def test_head_index_out_of_range() -> None:
    q, drv = make()
    drv.publish(200)
    with pytest.raises(VirtqueueError, match="outside a table"):
        q.pop()


def test_avail_idx_jump_refused() -> None:
    q, drv = make()
    drv.mem.write_int(AVAIL_AT + 2, 2, 9)  # 9 new entries in a ring of 8
    with pytest.raises(VirtqueueError, match="ahead"):
        q.pop()


@pytest.mark.parametrize(
    "size, desc, avail, used, why",
    [
        (6, DESC_AT, AVAIL_AT, USED_AT, "power of two"),
        (0, DESC_AT, AVAIL_AT, USED_AT, "power of two"),
        (512, DESC_AT, AVAIL_AT, USED_AT, "power of two"),  # above max_size 256
        (8, DESC_AT + 8, AVAIL_AT, USED_AT, "aligned"),
        (8, DESC_AT, AVAIL_AT + 1, USED_AT, "aligned"),
        (8, DESC_AT, AVAIL_AT, USED_AT + 2, "aligned"),
        (8, RAM - 64, AVAIL_AT, USED_AT, "not inside guest RAM"),
        (8, DESC_AT, AVAIL_AT, 0xFEE0_0000, "not inside guest RAM"),
    ],
)
def test_bad_layout_refused(size: int, desc: int, avail: int, used: int, why: str) -> None:
    q = Virtqueue(256)
    q.size, q.desc, q.avail, q.used = size, desc, avail, used
    with pytest.raises(VirtqueueError, match=why):
        q.activate(guest_ram(), event_idx=False, indirect=True)


def test_max_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError):
        Virtqueue(100)


class SpyMemory:
    """Wraps guest RAM and records that every access it was asked for lies inside RAM."""

    def __init__(self) -> None:
        self.inner = guest_ram()
        self.outside = 0

    def _check(self, gpa: int, size: int) -> None:
        if not self.inner.contains(gpa, size):
            self.outside += 1

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        return self.inner.read(gpa, size)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self._check(gpa, len(data))
        self.inner.write(gpa, data)

    def view(self, gpa: int, size: int) -> memoryview:
        self._check(gpa, size)
        return self.inner.view(gpa, size)

    def contains(self, gpa: int, size: int) -> bool:
        return self.inner.contains(gpa, size)


_desc = st.tuples(
    st.one_of(st.integers(0, RAM + 0x1000), st.integers(0, 2**64 - 1)),
    st.one_of(st.integers(0, 0x200), st.integers(0, 2**32 - 1)),
    st.integers(0, 7),
    st.integers(0, 0xFFFF),
)


@settings(max_examples=300, deadline=None)
@given(
    table=st.lists(_desc, min_size=8, max_size=8),
    indirect=st.lists(_desc, min_size=0, max_size=8),
    heads=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8),
    avail_idx=st.integers(0, 0xFFFF),
)
def test_fuzz_random_rings_only_raise_virtqueue_error(
    table: list[tuple[int, int, int, int]],
    indirect: list[tuple[int, int, int, int]],
    heads: list[int],
    avail_idx: int,
) -> None:
    mem = SpyMemory()
    q = Virtqueue(8)
    q.size, q.desc, q.avail, q.used = 8, DESC_AT, AVAIL_AT, USED_AT
    q.activate(mem, event_idx=True, indirect=True)  # type: ignore[arg-type]
    for i, d in enumerate(table):
        mem.inner.write(DESC_AT + 16 * i, struct.pack("<QIHH", *d))
    for i, d in enumerate(indirect):
        mem.inner.write(INDIRECT_AT + 16 * i, struct.pack("<QIHH", *d))
    for i, h in enumerate(heads):
        mem.inner.write_int(AVAIL_AT + 4 + 2 * i, 2, h)
    mem.inner.write_int(AVAIL_AT + 2, 2, avail_idx)
    popped = 0
    try:
        while (chain := q.pop()) is not None:
            popped += 1
            assert len(chain.readable) + len(chain.writable) <= 16  # bounded by the queue size
            for seg in chain.readable + chain.writable:
                assert mem.inner.contains(seg.addr, seg.length)
            q.push(chain.head, 0)
    except VirtqueueError:
        pass
    assert popped <= 8
    assert mem.outside == 0
