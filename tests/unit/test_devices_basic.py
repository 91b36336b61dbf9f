from __future__ import annotations

from broiler.core.bus import PioBus
from broiler.devices.demo.sync_demo import SyncRegisters
from broiler.devices.legacy.debug_exit import DebugExit
from broiler.devices.legacy.ports import SystemControlPortA
from broiler.devices.legacy.serial import FCR_CLEAR_RX, RX_FIFO_LIMIT, RX_ROOM_MARK, Serial8250
from tests.unit.fakes import FakeIrqLine


def test_sync_registers_driver_flow() -> None:
    dev = SyncRegisters()
    assert dev.read(0x0, 4) == 0x20
    dev.write(0x4, 4, 2)
    assert dev.read(0x4, 4) == 2
    assert (dev.read(0x8, 4), dev.read(0xC, 4)) == (0x10, 0x40)
    assert dev.guest_errors == 0


def test_sync_registers_hostile_accesses() -> None:
    dev = SyncRegisters()
    dev.write(0x8, 4, 0x99)  # read-only
    dev.write(0xC, 4, 0x99)
    dev.write(0x0, 2, 0x1234)  # wrong size
    dev.write(0x2, 4, 0x1234)  # unaligned
    assert dev.read(0x1, 1) == 0xFF
    assert dev.read(0x0, 8) == (1 << 64) - 1
    assert (dev.read(0x8, 4), dev.read(0xC, 4), dev.read(0x0, 4)) == (0x10, 0x40, 0x20)
    assert dev.guest_errors == 6


def test_debug_exit_status() -> None:
    got: list[int] = []
    dev = DebugExit(got.append)
    dev.write(0, 4, 0x21)
    dev.write(0, 1, 0)
    assert got == [0x43, 1]


def test_serial_transmit_lsr_and_scratch() -> None:
    out: list[bytes] = []
    uart = Serial8250(out.append)
    bus = PioBus()
    bus.register(0x3F8, 8, uart)
    for ch in b"hi":
        assert bus.read(0x3FD, 1) & 0x60 == 0x60  # THRE | TEMT always
        bus.write(0x3F8, 1, ch)
    assert b"".join(out) == b"hi"
    bus.write(0x3FF, 1, 0x5A)
    assert bus.read(0x3FF, 1) == 0x5A


def test_serial_receive_interrupt_and_dlab() -> None:
    line = FakeIrqLine(gsi=4)
    levels = line.history
    uart = Serial8250(lambda b: None, line)
    uart.write(3, 1, 0x80)  # DLAB on: offsets 0/1 are the divisor
    uart.write(0, 1, 0x01)
    uart.write(1, 1, 0x00)
    uart.write(3, 1, 0x03)
    assert uart.dll == 1
    uart.write(1, 1, 0x01)  # IER: receive interrupt
    uart.feed(b"x")
    assert levels == [1]
    assert uart.read(5, 1) & 0x01  # DR
    assert uart.read(2, 1) & 0x0F == 0x04
    assert uart.read(0, 1) == ord("x")
    assert levels == [1, 0]


def test_serial_thr_empty_interrupt_acknowledged_by_iir_read() -> None:
    line = FakeIrqLine(gsi=4)
    levels = line.history
    uart = Serial8250(lambda b: None, line)
    uart.write(1, 1, 0x02)  # IER.THRI with an empty transmitter: interrupt now
    assert levels == [1]
    assert uart.read(2, 1) & 0x0F == 0x02
    assert levels == [1, 0]


def test_serial_loopback_feeds_receiver() -> None:
    out: list[bytes] = []
    uart = Serial8250(out.append)
    uart.write(4, 1, 0x10)
    uart.write(0, 1, 0x41)
    assert out == [] and uart.read(0, 1) == 0x41


def test_serial_feed_takes_what_fits_and_reports_room_at_half() -> None:
    uart = Serial8250(lambda b: None)
    rooms: list[int] = []
    uart.on_room = lambda: rooms.append(1)
    assert uart.feed(b"a" * (RX_FIFO_LIMIT - 1)) == RX_FIFO_LIMIT - 1
    assert uart.feed(b"bc") == 1  # the feeder keeps "c"
    for _ in range(RX_FIFO_LIMIT - RX_ROOM_MARK - 1):
        assert uart.read(0, 1) == ord("a")
    assert rooms == []  # one more than half still waits
    assert uart.read(0, 1) == ord("a") and rooms == [1]
    while uart.read(5, 1) & 0x01:
        last = uart.read(0, 1)
    assert last == ord("b") and rooms == [1]  # once per refusal
    assert uart.feed(b"d" * (RX_FIFO_LIMIT + 1)) == RX_FIFO_LIMIT
    uart.write(2, 1, FCR_CLEAR_RX)  # the guest emptied the FIFO: room too
    assert rooms == [1, 1]
    uart.write(4, 1, 0x10)  # loopback into a FIFO... now empty, then full: no feeder was refused
    for _ in range(RX_FIFO_LIMIT + 1):
        uart.write(0, 1, 0x41)
    uart.write(2, 1, FCR_CLEAR_RX)
    assert rooms == [1, 1]


def test_port92() -> None:
    resets: list[int] = []
    dev = SystemControlPortA(lambda: resets.append(1))
    assert dev.read(0, 1) == 0x02
    dev.write(0, 1, 0x02)
    dev.write(0, 1, 0x03)
    assert resets == [1]
