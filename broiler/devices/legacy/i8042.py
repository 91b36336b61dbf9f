"""An i8042 keyboard controller, enough for Linux to probe it and to reboot through it.

Ports: 0x60 data, 0x64 status (read) / command (write). Port 0x61 belongs to the in-kernel PIT.
No host keyboard is attached: the controller answers the commands Linux's i8042 and atkbd drivers
send at boot, and command 0xFE (pulse the reset line) reboots the machine — Linux's `reboot=k`.

Commands (port 0x64): 0x20 read the configuration byte, 0x60 write it (next data byte), 0xA7/0xA8
disable/enable the aux port, 0xA9 test aux (0x00 = ok), 0xAA self test (0x55), 0xAB test the
keyboard port (0x00), 0xAD/0xAE disable/enable the keyboard, 0xD1 write output port (bit 0 clear =
reset), 0xD2/0xD3 echo the next byte as keyboard/aux data, 0xD4 send the next byte to the aux
device (answered 0xFA), 0xFE reset. Keyboard commands (port 0x60, no controller command pending):
0xFF reset (0xFA 0xAA), 0xF2 identify (0xFA 0xAB 0x41), 0xED/0xF0/0xF3 take an argument (0xFA each),
anything else 0xFA. Output bytes raise IRQ 1 (keyboard) or IRQ 12 (aux) when enabled in the
configuration byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ...core.bus import Device
from ...core.irq import IrqLine
from ...core.state import STATELESS, check_keys, take_list
from ...errors import SnapshotError

I8042_DATA = 0x60
I8042_COMMAND = 0x64
KBD_IRQ, AUX_IRQ = 1, 12

STATUS_OBF, STATUS_SYS, STATUS_CMD, STATUS_AUX_DATA = 0x01, 0x04, 0x08, 0x20
CONFIG_KBD_INT, CONFIG_AUX_INT, CONFIG_SYS = 0x01, 0x02, 0x04
CONFIG_KBD_DISABLED, CONFIG_AUX_DISABLED, CONFIG_XLATE = 0x10, 0x20, 0x40
ACK = 0xFA


class I8042(Device):
    """Registered twice: at 0x60 (data, 1 port) and 0x64 (command/status, 1 port); ``offset`` is
    relative to each, so the device tells them apart by which region it was reached through."""

    name = "i8042"
    state_fields = ("config:8", "pending?:8", "kbd_arg_pending")
    OUT_LIMIT = 4096  # output bytes a restored controller may hold (a guest could queue more, never needs to)

    def __init__(
        self, reset: Callable[[], None], kbd_irq: IrqLine | None = None, aux_irq: IrqLine | None = None
    ) -> None:
        super().__init__()
        self._reset = reset
        self._lines = {KBD_IRQ: kbd_irq, AUX_IRQ: aux_irq}
        self.config = CONFIG_KBD_INT | CONFIG_SYS | CONFIG_XLATE
        self.pending: int | None = None  # controller command waiting for its data byte
        self.kbd_arg_pending = False  # keyboard command waiting for its argument
        self.out: deque[tuple[int, bool]] = deque()  # (byte, from aux)
        self.levels = {KBD_IRQ: 0, AUX_IRQ: 0}

    def save_state(self) -> dict[str, Any]:
        return {"registers": super().save_state(), "out": [[byte, aux] for byte, aux in self.out]}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = check_keys(state, ("registers", "out"), self.name)
        out: deque[tuple[int, bool]] = deque()
        for item in take_list(saved, "out", self.name, self.OUT_LIMIT):
            if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and type(item[1]) is bool):
                raise SnapshotError(f"{self.name}: output entry {item!r} is not [byte, from-aux]")
            if not 0 <= item[0] <= 0xFF:
                raise SnapshotError(f"{self.name}: output byte {item[0]} is not a byte")
            out.append((item[0], item[1]))
        super().load_state(saved["registers"])
        self.out = out
        self.levels = {KBD_IRQ: 0, AUX_IRQ: 0}  # a fresh machine's lines are low: raise what is pending
        self._update_irq()

    def data_port(self) -> Device:
        return _Port(self, is_command=False)

    def command_port(self) -> Device:
        return _Port(self, is_command=True)

    # -- output buffer ---------------------------------------------------------------------
    def _push(self, byte: int, aux: bool = False) -> None:
        self.out.append((byte & 0xFF, aux))
        self._update_irq()

    def _update_irq(self) -> None:
        head_aux = self.out[0][1] if self.out else None
        want = {
            KBD_IRQ: int(head_aux is False and bool(self.config & CONFIG_KBD_INT)),
            AUX_IRQ: int(head_aux is True and bool(self.config & CONFIG_AUX_INT)),
        }
        for irq, level in want.items():
            if level != self.levels[irq]:
                self.levels[irq] = level
                line = self._lines[irq]
                if line is not None:
                    line.set_level(bool(level))

    def status(self) -> int:
        value = STATUS_SYS if self.config & CONFIG_SYS else 0
        if self.out:
            value |= STATUS_OBF | (STATUS_AUX_DATA if self.out[0][1] else 0)
        return value

    def read_data(self) -> int:
        byte = self.out.popleft()[0] if self.out else 0
        self._update_irq()
        return byte

    # -- commands --------------------------------------------------------------------------
    def command(self, cmd: int) -> None:
        if cmd == 0x20:
            self._push(self.config)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = cmd
        elif cmd == 0xA7:
            self.config |= CONFIG_AUX_DISABLED
        elif cmd == 0xA8:
            self.config &= ~CONFIG_AUX_DISABLED
        elif cmd in (0xA9, 0xAB):
            self._push(0x00)
        elif cmd == 0xAA:
            self._push(0x55)
        elif cmd == 0xAD:
            self.config |= CONFIG_KBD_DISABLED
        elif cmd == 0xAE:
            self.config &= ~CONFIG_KBD_DISABLED
        elif cmd == 0xFE or (0xF0 <= cmd <= 0xFF and not cmd & 1):
            self._reset()  # pulse output line 0 (CPU reset) low
        else:
            self.guest_error(f"unknown controller command {cmd:#x}")

    def write_data(self, byte: int) -> None:
        cmd, self.pending = self.pending, None
        if cmd == 0x60:
            self.config = byte
            self._update_irq()
        elif cmd == 0xD1:
            if not byte & 1:
                self._reset()
        elif cmd == 0xD2:
            self._push(byte)
        elif cmd == 0xD3:
            self._push(byte, aux=True)
        elif cmd == 0xD4:
            self._push(ACK, aux=True)
        else:
            self._keyboard(byte)

    def _keyboard(self, byte: int) -> None:
        if self.kbd_arg_pending:
            self.kbd_arg_pending = False
            self._push(ACK)
        elif byte == 0xFF:
            self._push(ACK)
            self._push(0xAA)
        elif byte == 0xF2:
            for b in (ACK, 0xAB, 0x41):
                self._push(b)
        elif byte in (0xED, 0xF0, 0xF3):
            self.kbd_arg_pending = True
            self._push(ACK)
        else:
            self._push(ACK)


class _Port(Device):
    state_fields = STATELESS  # the controller's state is saved once, through ``state_owner``

    def __init__(self, controller: I8042, *, is_command: bool) -> None:
        super().__init__()
        self.controller = controller
        self.state_owner = controller
        self.is_command = is_command
        self.name = "i8042 command" if is_command else "i8042 data"

    def read(self, offset: int, size: int) -> int:
        c = self.controller
        return c.status() if self.is_command else c.read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        c = self.controller
        if self.is_command:
            c.command(value & 0xFF)
        else:
            c.write_data(value & 0xFF)
