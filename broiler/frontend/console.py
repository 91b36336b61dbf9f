"""`--console serial|virtio`: the terminal becomes the guest's console, as in QEMU's -nographic.

stdin is read on the event-loop thread and fed to the console device (the UART's receiver, or the
virtio-console's receive queue: ``TerminalConsole`` takes the device's ``feed``, so both consoles share
the escape handling below). On a terminal, stdin goes
into raw mode (no echo, no line editing, Ctrl-C goes to the guest) and output keeps its newline
translation. The escape key is Ctrl-A: Ctrl-A x ends the VM (exit status 12, exitcodes.USER_QUIT), Ctrl-A Ctrl-A sends a
literal Ctrl-A. The terminal is restored on every way out: a normal end, an exception, a signal
(the machine's own handlers end the run through the same ``finally``) and, as a last resort, atexit.
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
from typing import Any

from ..core.eventloop import EventLoop

CTRL_A = 0x01


def _pollable(fd: int) -> bool:
    """Whether epoll can watch ``fd`` (it refuses regular files and /dev/null with EPERM)."""
    with select.epoll() as probe:
        try:
            probe.register(fd, select.EPOLLIN)
        except PermissionError:
            return False
    return True


class TerminalConsole:
    def __init__(
        self, feed: Callable[[bytes], None], loop: EventLoop, quit_vm: Callable[[], None], stdin_fd: int | None = None
    ) -> None:
        self.feed = feed
        self.loop = loop
        self.quit_vm = quit_vm
        self.fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self._saved: list[Any] | None = None
        self._escape = False
        self._reading = False
        self._watched = False

    def start(self) -> None:
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            raw = termios.tcgetattr(self.fd)
            raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
            raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
            raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, raw)
            atexit.register(self.restore)
        self._reading = True
        self._watched = _pollable(self.fd)
        if self._watched:
            self.loop.add_reader(self.fd, self._on_input)
        else:  # a regular file or /dev/null: epoll refuses it, and all of it can be read now
            threading.Thread(target=self._read_file, name="broiler-stdin", daemon=True).start()

    def _read_file(self) -> None:
        """stdin that epoll cannot watch, read on its own thread; each chunk reaches the device from the loop
        thread, as a terminal's input does."""
        while self._reading:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                data = b""
            if not data:
                return
            self.loop.call_soon(functools.partial(self._deliver, data))

    def _deliver(self, data: bytes) -> None:
        self.feed(self.filter(data))

    def _on_input(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # EOF: nothing more will come
            self._stop_reading()
            return
        self.feed(self.filter(data))

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
        if self._reading:
            self._reading = False
            if self._watched:
                self.loop.remove_reader(self.fd)

    def restore(self) -> None:
        self._stop_reading()
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None
