"""The terminal console (frontend/console.py), no KVM: the Ctrl-A escape, stdin that epoll cannot watch, and
back-pressure: a guest that reads slowly gets every byte, in order, while the console holds at most 4 KiB
and stops reading stdin when that is full; on a terminal, a guest that reads nothing cannot keep Ctrl-A x
from working."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broiler.core.eventloop import EventLoop
from broiler.devices.legacy.serial import LSR_DR, RX_FIFO_LIMIT, Serial8250
from broiler.frontend import console as console_module
from broiler.frontend.console import HOLD_LIMIT, TerminalConsole

WAIT = 30.0  # generous bound for the whole transfer; a failing test fails here instead of hanging
LOOP_THREAD = "broiler-events"
# 10,000 printable bytes with no Ctrl-A in them, in a pattern that shows any loss or reordering.
TYPED = bytes(32 + (i * 7 + i // 95) % 95 for i in range(10_000))


class Offers:
    """What the console offered a device: (bytes offered, bytes taken, thread), one entry per feed."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int, str]] = []

    def note(self, offered: int, taken: int) -> int:
        self.log.append((offered, taken, threading.current_thread().name))
        return taken

    @property
    def refused(self) -> int:
        return sum(1 for offered, taken, _ in self.log if taken < offered)


class WatchedUart(Serial8250):
    def __init__(self) -> None:
        super().__init__(lambda b: None)
        self.offers = Offers()

    def feed(self, data: bytes) -> int:
        return self.offers.note(len(data), super().feed(data))


class Collector:
    """A device that takes everything, noting the thread that fed it."""

    def __init__(self) -> None:
        self.on_room: Callable[[], None] | None = None
        self.got: list[tuple[bytes, str]] = []

    def feed(self, data: bytes) -> int:
        self.got.append((data, threading.current_thread().name))
        return len(data)


@contextmanager
def running_loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
        loop.close()


@contextmanager
def stdin_with(source: str, data: bytes, tmp_path: Path) -> Iterator[int]:
    """A read fd holding ``data`` then EOF: a pipe (a loop reader) or a regular file (the reader thread)."""
    if source == "file":
        path = tmp_path / "typed"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
    else:
        fd, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 16)
        assert os.write(w, data) == len(data)  # all of it fits in the pipe: only the console limits reading
        os.close(w)
    try:
        yield fd
    finally:
        os.close(fd)


def wait_until(done: Callable[[], bool], limit: float = WAIT) -> bool:
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_console_escape_handling() -> None:
    quits: list[int] = []
    console = TerminalConsole(Serial8250(lambda b: None), EventLoop(), lambda: quits.append(1), stdin_fd=0)
    assert console.filter(b"ls\r") == b"ls\r"
    assert console.filter(b"a\x01\x01b") == b"a\x01b"  # Ctrl-A Ctrl-A: a literal Ctrl-A
    assert console.filter(b"\x01") == b"" and console.filter(b"zq") == b"q"  # escape spans reads
    assert console.filter(b"ok\x01xignored") == b"ok" and quits == [1]


def test_console_reads_stdin_that_epoll_cannot_watch(tmp_path: Path) -> None:
    """A regular file (or /dev/null) as stdin: epoll refuses it (EPERM), so it is read on a thread and each
    chunk still reaches the device from the loop thread; /dev/null is simply EOF."""
    typed = tmp_path / "typed.txt"
    typed.write_bytes(b"echo hi\n" * 1000)

    def read_through_console(loop: EventLoop, path: Path, size: int) -> Collector:
        device = Collector()
        with open(path, "rb") as f:
            console = TerminalConsole(device, loop, lambda: None, stdin_fd=f.fileno())
            console.start()
            assert wait_until(lambda: sum(len(b) for b, _ in device.got) >= size, 10)
            console.restore()
        return device

    with running_loop() as loop:
        for path, want in ((typed, typed.read_bytes()), (Path(os.devnull), b"")):
            device = read_through_console(loop, path, len(want))
            assert b"".join(b for b, _ in device.got) == want
            assert {name for _, name in device.got} <= {LOOP_THREAD}


@pytest.mark.parametrize("source", ["pipe", "file"])
def test_a_slow_guest_gets_every_byte_through_the_uart(source: str, tmp_path: Path) -> None:
    """10,000 bytes into a 4 KiB receive FIFO that the guest reads 64 bytes at a time: nothing is lost, the
    order is kept, the device was really full (refused some), and the console never held more than 4 KiB."""
    uart = WatchedUart()
    got = bytearray()
    most_held = 0
    quits: list[int] = []
    with running_loop() as loop, stdin_with(source, TYPED, tmp_path) as fd:
        console = TerminalConsole(uart, loop, lambda: quits.append(1), stdin_fd=fd)

        def guest() -> None:  # a vCPU reading RBR while LSR says data is ready, with pauses between bursts
            nonlocal most_held
            deadline = time.monotonic() + WAIT
            while len(got) < len(TYPED) and time.monotonic() < deadline:
                most_held = max(most_held, console.held)
                for _ in range(64):
                    if not uart.read(5, 1) & LSR_DR:
                        break
                    got.append(uart.read(0, 1))
                time.sleep(0.002)

        reader = threading.Thread(target=guest, name="fake-vcpu")
        console.start()
        reader.start()
        reader.join()
        console.restore()
    assert bytes(got) == TYPED and not quits
    assert uart.offers.refused > 0  # the FIFO did fill: the back-pressure path was taken
    assert max(offered for offered, _, _ in uart.offers.log) <= HOLD_LIMIT
    assert most_held <= HOLD_LIMIT and console.held == 0
    assert {thread for _, _, thread in uart.offers.log} == {LOOP_THREAD}


def unread(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def test_a_full_hold_stops_reading_stdin_and_ctrl_a_x_still_quits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that never reads: the FIFO takes 4 KiB, the console holds 4 KiB more and leaves the rest in
    the pipe, however long it waits (a pipe never drops). Before the hold is full, a Ctrl-A x typed behind
    held input quits at once."""
    monkeypatch.setattr(console_module, "STUCK_AFTER", 0.05)
    uart = WatchedUart()
    quits: list[int] = []
    with running_loop() as loop, stdin_with("pipe", TYPED, tmp_path) as fd:
        console = TerminalConsole(uart, loop, lambda: quits.append(1), stdin_fd=fd)
        console.start()
        assert wait_until(lambda: console.held == HOLD_LIMIT)
        time.sleep(0.3)  # time to read more, or to give up on the guest, if it wrongly did
        assert unread(fd) == len(TYPED) - RX_FIFO_LIMIT - HOLD_LIMIT and console.held == HOLD_LIMIT
        assert not quits and console.dropped == 0
        console.restore()

    uart = WatchedUart()
    r, w = os.pipe()
    try:
        with running_loop() as loop:
            console = TerminalConsole(uart, loop, lambda: quits.append(1), stdin_fd=r)
            console.start()
            os.write(w, TYPED[: RX_FIFO_LIMIT + 100])
            assert wait_until(lambda: console.held == 100)
            os.write(w, b"\x01x")
            assert wait_until(lambda: quits == [1])
            assert console.held == 100  # the escape reached no one: the held input still waits
            console.restore()
    finally:
        os.close(r)
        os.close(w)


def test_a_terminal_whose_guest_reads_nothing_still_sees_ctrl_a_x(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """On a terminal, a full hold with no room for STUCK_AFTER: the rest of the typing is read for the escape
    only (dropped, counted, said on stderr), so Ctrl-A x quits; once the guest reads, input flows again."""
    monkeypatch.setattr(console_module, "STUCK_AFTER", 0.2)
    uart = WatchedUart()
    quits: list[int] = []
    leader, follower = pty.openpty()
    try:
        with running_loop() as loop:
            console = TerminalConsole(uart, loop, lambda: quits.append(1), stdin_fd=follower)
            console.start()  # raw mode first: no echo, no line editing of what the test types
            typist = threading.Thread(target=os.write, args=(leader, TYPED))  # may block on a full tty buffer
            typist.start()
            assert wait_until(lambda: console.dropped == len(TYPED) - RX_FIFO_LIMIT - HOLD_LIMIT)
            typist.join()
            assert console.held == HOLD_LIMIT and not quits
            os.write(leader, b"\x01x")
            assert wait_until(lambda: quits == [1])
            got = bytearray()

            def guest_reads() -> bool:  # at last: the held input follows the FIFO's
                while uart.read(5, 1) & LSR_DR:
                    got.append(uart.read(0, 1))
                return len(got) >= RX_FIFO_LIMIT + HOLD_LIMIT

            assert wait_until(guest_reads)
            assert bytes(got) == TYPED[: RX_FIFO_LIMIT + HOLD_LIMIT] and console.held == 0
            os.write(leader, b"more")  # and reading is back to normal
            assert wait_until(lambda: bool(uart.read(5, 1) & LSR_DR))
            assert bytes(uart.read(0, 1) for _ in range(4)) == b"more"
            console.restore()
    finally:
        os.close(leader)
        os.close(follower)
    assert "reads no console input" in capfd.readouterr().err
