"""A 16550A-compatible UART (8250 family) as a sans-IO register model.

Output bytes go to an injected ``output(bytes)`` callable; input arrives through ``feed(bytes)``
from whatever owns the terminal; the interrupt line is an injected ``IrqLine`` (level-triggered; None = not wired).
Transmission is instantaneous, so LSR always shows THRE|TEMT (test kernels poll for it).

Input from the host is never dropped: ``feed`` takes what fits in the receive FIFO (``RX_FIFO_LIMIT``)
and returns how many bytes that was. A feeder told "not all" keeps the rest and waits for ``on_room``,
which the device calls once the guest has read the FIFO down to ``RX_ROOM_MARK`` (on the vCPU thread that
read RBR, after the device's lock is dropped): back-pressure, as QEMU's character devices do, rather than
an overrun.

Registers (offset from the base, DLAB = LCR bit 7)::

    0 RBR (read) / THR (write) / DLL (DLAB)      4 MCR
    1 IER / DLM (DLAB)                           5 LSR (read-only)
    2 IIR (read) / FCR (write)                   6 MSR (read-only)
    3 LCR                                        7 SCR
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ...core.bus import Device
from ...core.irq import IrqLine
from ...core.state import check_keys, take_bytes

COM1_BASE, COM1_IRQ = 0x3F8, 4
COM2_BASE, COM2_IRQ = 0x2F8, 3
UART_SIZE = 8

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_THRI, IIR_RDI, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
LCR_DLAB = 0x80
MCR_LOOP = 0x10
MSR_IDLE = 0xB0  # DCD | DSR | CTS
FCR_ENABLE, FCR_CLEAR_RX = 0x01, 0x02
RX_FIFO_LIMIT = 4096
RX_ROOM_MARK = RX_FIFO_LIMIT // 2  # a refused feeder hears back at half: a wakeup moves a real amount


class Serial8250(Device):
    state_fields = ("dll:8", "dlm:8", "ier:4", "lcr:8", "mcr:5", "scr:8", "fcr:8", "thr_empty_pending")

    def __init__(self, output: Callable[[bytes], None], irq: IrqLine | None = None, name: str = "ttyS0") -> None:
        super().__init__()
        self.name = name
        self._output = output
        self._irq = irq
        self.rx: deque[int] = deque()
        self.dll, self.dlm = 0x0C, 0x00  # 9600 baud
        self.ier = 0
        self.lcr = 0x03
        self.mcr = 0x08
        self.scr = 0
        self.fcr = 0
        self.thr_empty_pending = False  # THRI interrupt latched until IIR is read or THR written
        self._irq_level = 0
        self.tx_bytes = 0
        # Who to tell that the FIFO has room again after a feed was refused; called without the lock held.
        self.on_room: Callable[[], None] | None = None
        self._refused = False  # host state, not the guest's: not in a snapshot
        # feed() runs on the console's thread, register accesses on vCPU threads.
        self._lock = threading.RLock()

    # -- snapshot ------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        with self._lock:
            return {"registers": super().save_state(), "rx": bytes(self.rx)}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("registers", "rx"), self.name)
        rx = take_bytes(saved, "rx", self.name, most=RX_FIFO_LIMIT)
        with self._lock:
            super().load_state(saved["registers"])
            self.rx = deque(rx)
            self._irq_level = 0  # the line of a fresh machine is low: raise it again if the registers say so
            self._update_irq()

    # -- input side (host → guest) ------------------------------------------------------
    def feed(self, data: bytes) -> int:
        """Queue what fits for the guest; returns how many of the first bytes were taken. When that is not
        all of them, ``on_room`` is called once the FIFO has drained to ``RX_ROOM_MARK``."""
        with self._lock:
            taken = self._receive(data)
            if taken < len(data):
                self._refused = True
            return taken

    def _receive(self, data: bytes) -> int:
        room = max(RX_FIFO_LIMIT - len(self.rx), 0)
        self.rx.extend(data[:room])
        self._update_irq()
        return min(room, len(data))

    def _room_again(self) -> Callable[[], None] | None:
        """Under the lock: the callback to run (after it) if a refused feeder should hear of room now."""
        if self._refused and len(self.rx) <= RX_ROOM_MARK:
            self._refused = False
            return self.on_room
        return None

    # -- registers ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read(offset, size)
            wake = self._room_again() if self._refused else None
        if wake is not None:
            wake()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write(offset, size, value)
            wake = self._room_again() if self._refused else None  # FCR can clear the FIFO
        if wake is not None:
            wake()

    def _read(self, offset: int, size: int) -> int:
        if size != 1:
            self.guest_error(f"{size}-byte read at +{offset} (UART registers are bytes)")
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._update_irq()
            return value
        if offset == 1:
            return self.dlm if dlab else self.ier
        if offset == 2:
            iir = self._pending_iir()
            if iir == IIR_THRI:
                self.thr_empty_pending = False  # reading IIR acknowledges THRE
                self._update_irq()
            return iir | (IIR_FIFO if self.fcr & FCR_ENABLE else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        if offset == 6:
            return MSR_IDLE
        if offset == 7:
            return self.scr
        return 0xFF

    def _write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.guest_error(f"{size}-byte write at +{offset} (UART registers are bytes)")
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                self.dll = value
            elif self.mcr & MCR_LOOP:
                self._receive(bytes([value]))  # a full FIFO loses it, as the chip's overrun does
            else:
                self.tx_bytes += 1
                self._output(bytes([value]))
                self.thr_empty_pending = True
                self._update_irq()
        elif offset == 1:
            if dlab:
                self.dlm = value
            else:
                # Enabling THRI with an empty transmitter raises the interrupt at once (16550).
                if value & IER_THRI and not self.ier & IER_THRI:
                    self.thr_empty_pending = True
                self.ier = value & 0x0F
                self._update_irq()
        elif offset == 2:
            self.fcr = value
            if value & FCR_CLEAR_RX:
                self.rx.clear()
                self._update_irq()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
        # LSR and MSR are read-only: writes are ignored, as on the real part.

    # -- interrupt logic -------------------------------------------------------------------
    def _pending_iir(self) -> int:
        if self.ier & IER_RDI and self.rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_empty_pending:
            return IIR_THRI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = 0 if self._pending_iir() == IIR_NO_INT else 1
        if level != self._irq_level:
            self._irq_level = level
            if self._irq is not None:
                self._irq.set_level(bool(level))
