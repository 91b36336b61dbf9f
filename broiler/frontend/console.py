"""`--console serial|virtio`: the terminal becomes the guest's console, as in QEMU's -nographic.

stdin is read on the event-loop thread and fed to the console device (the UART's receiver, or the
virtio-console's receive queue: ``TerminalConsole`` takes either device, so both consoles share the escape
handling below). On a terminal, stdin goes
into raw mode (no echo, no line editing, Ctrl-C goes to the guest) and output keeps its newline
translation. The escape key is Ctrl-A: Ctrl-A x ends the VM (exit status 12, exitcodes.USER_QUIT), Ctrl-A Ctrl-A sends a
literal Ctrl-A. The terminal is restored on every way out: a normal end, an exception, a signal
(the machine's own handlers end the run through the same ``finally``) and, as a last resort, atexit.

No input is lost (back-pressure, as QEMU's character devices do): the device's ``feed`` says how much it
took, and what it did not take is held here (at most ``HOLD_LIMIT`` bytes, one read's worth) until the
device calls ``on_room``. While anything is held nothing more is fed, and stdin is read only while the
hold has space: the reader leaves the loop when the hold is full, and a stdin that epoll cannot watch
(read on a thread) is read again only once the hold is empty. The escape is handled as bytes are read,
so Ctrl-A x quits at once even with input held back.

One exception keeps Ctrl-A x working against a guest that reads nothing (hung, hostile, paused): on a
terminal, once the hold has been full for ``STUCK_AFTER`` seconds with no room reported, stdin is read
again only to look for the escape, and what is typed meanwhile is dropped (counted in ``dropped``, one
line on stderr says so) until the device has room again: a real serial line overruns the same way. Pipes
and files never drop; a program feeding them ends the VM another way (a signal, ``broiler stop``).
"""

from __future__ import annotations

import atexit
import functools
import os
import select
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..core.eventloop import EventLoop

CTRL_A = 0x01
HOLD_LIMIT = 4096  # input the device has not taken yet, at most: one read's worth
STUCK_AFTER = 1.0  # seconds of a full hold and no room before a terminal is read for the escape only


class ConsoleDevice(Protocol):
    """The device side (Serial8250, VirtioConsole): ``feed`` returns how many of the first bytes it took;
    after a refusal it calls ``on_room`` (from any thread) once it has room again."""

    on_room: Callable[[], None] | None

    def feed(self, data: bytes) -> int: ...


def _pollable(fd: int) -> bool:
    """Whether epoll can watch ``fd`` (it refuses regular files and /dev/null with EPERM)."""
    with select.epoll() as probe:
        try:
            probe.register(fd, select.EPOLLIN)
        except PermissionError:
            return False
    return True


class TerminalConsole:
    """Feeding, the hold and the reader's state belong to the event-loop thread; other threads (the file
    reader, the device's ``on_room``) reach them through ``loop.call_soon``."""

    def __init__(
        self, device: ConsoleDevice, loop: EventLoop, quit_vm: Callable[[], None], stdin_fd: int | None = None
    ) -> None:
        self.device = device
        self.loop = loop
        self.quit_vm = quit_vm
        self.fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self._saved: list[Any] | None = None
        self._escape = False
        self._reading = False  # stdin is still open to us (no EOF, not restored)
        self._watched = False  # stdin is pollable: read by a loop reader, not a thread
        self._listening = False  # the loop reader is registered
        self._closed = False  # restored: nothing more goes to the device
        self._held = bytearray()  # filtered input the device has not taken
        self._waiting = False  # the device refused some: feed nothing until it reports room
        self._tty = False
        # Pending while a terminal's hold is full. A thread's timer, not the loop's: the loop's timers are
        # recorded (--record) and held by a pause, and this one is the host's and must fire during a pause.
        self._stuck_timer: threading.Timer | None = None
        self._escape_only = False  # the guest reads nothing: a terminal is read for Ctrl-A x only
        self.dropped = 0  # bytes typed while in escape-only mode
        self._file_turn = threading.Event()  # the file reader may read its next chunk

    @property
    def held(self) -> int:
        """Bytes waiting for the device (at most HOLD_LIMIT)."""
        return len(self._held)

    def start(self) -> None:
        self._tty = os.isatty(self.fd)
        if self._tty:
            self._saved = termios.tcgetattr(self.fd)
            raw = termios.tcgetattr(self.fd)
            raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
            raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
            raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, raw)
            atexit.register(self.restore)
        self.device.on_room = self._room_from_device
        self._reading = True
        self._watched = _pollable(self.fd)
        if self._watched:
            self._listen(True)
        else:  # a regular file or /dev/null: epoll refuses it, and all of it can be read now
            threading.Thread(target=self._read_file, name="broiler-stdin", daemon=True).start()

    def _read_file(self) -> None:
        """stdin that epoll cannot watch, read on its own thread one chunk at a time: each chunk reaches
        the device from the loop thread, as a terminal's input does, and the next is read once the device
        has taken all of it (so a large file costs one chunk of memory, not the whole file)."""
        while self._reading:
            try:
                data = os.read(self.fd, HOLD_LIMIT)
            except OSError:
                data = b""
            if not data:
                self.loop.call_soon(self._stop_reading)
                return
            self._file_turn.clear()
            self.loop.call_soon(functools.partial(self._take, data))
            self._file_turn.wait()

    def _on_input(self) -> None:
        room = HOLD_LIMIT if self._escape_only else HOLD_LIMIT - len(self._held)
        if not self._listening or room <= 0:  # a readiness reported before the reader left the loop
            return
        try:
            data = os.read(self.fd, room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # EOF: nothing more will come (what is held still goes to the device)
            self._stop_reading()
            return
        if self._escape_only:
            self.dropped += len(self.filter(data))
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Input just read (loop thread): escapes handled now, the rest held and offered to the device."""
        self._held += self.filter(data)
        self._push()

    def _room_from_device(self) -> None:
        """The device has room again (any thread)."""
        if not self._closed:
            self.loop.call_soon(self._room)

    def _room(self) -> None:
        self._waiting = self._escape_only = False
        if self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None
        self._push()

    def _stuck(self) -> None:
        """The terminal's hold stayed full: read it again, for the escape only."""
        self._stuck_timer = None
        if self._closed or not self._waiting or len(self._held) < HOLD_LIMIT:
            return
        self._escape_only = True
        try:
            os.write(
                2,
                b"\r\nbroiler: the guest reads no console input: typing is dropped until it does (Ctrl-A x quits)\r\n",
            )
        except OSError:
            pass  # no stderr: the count in ``dropped`` remains
        self._listen(self._reading)

    def _push(self) -> None:
        """Offer the held input to the device unless it is still full, then read on if the hold has space."""
        if self._closed:
            return
        if self._held and not self._waiting:
            taken = self.device.feed(bytes(self._held))
            del self._held[:taken]
            self._waiting = bool(self._held)
        if not self._held:
            self._file_turn.set()
        full = len(self._held) >= HOLD_LIMIT
        if self._watched:
            self._listen(self._reading and (not full or self._escape_only))
        if full and self._tty and self._stuck_timer is None and not self._escape_only:
            self._stuck_timer = threading.Timer(STUCK_AFTER, self.loop.call_soon, (self._stuck,))
            self._stuck_timer.daemon = True
            self._stuck_timer.start()

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self.loop.add_reader(self.fd, self._on_input)
        elif self._listening and not on:
            self.loop.remove_reader(self.fd)
        self._listening = on

    def filter(self, data: bytes) -> bytes:
        """Handle the Ctrl-A escape; returns what goes to the guest."""
        out = bytearray()
        for byte in data:
            if self._escape:
                self._escape = False
                if byte in (ord("x"), ord("X")):
                    self.quit_vm()
                    break
                if byte == CTRL_A:
                    out.append(CTRL_A)
                continue  # Ctrl-A + anything else: dropped, as QEMU does
            if byte == CTRL_A:
                self._escape = True
            else:
                out.append(byte)
        return bytes(out)

    def _stop_reading(self) -> None:
        self._reading = False
        if self._watched:
            self._listen(False)

    def restore(self) -> None:
        """Give the terminal back (any thread): stop reading and feeding; input still held is dropped with
        the VM."""
        self._closed = True
        self._reading = False
        timer = self._stuck_timer
        if timer is not None:
            timer.cancel()
        self.device.on_room = None
        # On the loop thread, so a _push running there cannot put the reader back after this.
        self.loop.run_sync(self._stop_reading, timeout=1.0)
        self._file_turn.set()  # the file reader, if waiting, sees it is over
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None
