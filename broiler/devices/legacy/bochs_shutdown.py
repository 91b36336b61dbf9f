"""The Bochs/APM power-off port: writing the bytes of "Shutdown" to port 0x8900 ends the VM.

Bochs' BIOS and old QEMU (hw/pc.c ``bochs_bios_write``, removed from QEMU long ago) matched the
string one byte write at a time: a byte equal to the next expected character advances, any other
byte starts over (without re-checking it as a first 'S', exactly as QEMU did), and the eighth match
requests a shutdown, which QEMU turned into a clean exit with status 0. Current QEMU has nothing on
0x8900 (the writes are ignored and the guest keeps running), so this is a broiler extra that some
hobby and teaching kernels (Pintos, ucore) still rely on.

Only byte writes take part; wider writes are counted as guest errors and leave the match state
alone. Reads return all ones, like the unmapped port it is in QEMU.
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.bus import Device

SHUTDOWN_PORT = 0x8900
SHUTDOWN_PORT_SIZE = 1
SHUTDOWN_STRING = b"Shutdown"


class BochsShutdown(Device):
    name = "bochs-shutdown"
    state_fields = ("matched:3",)  # how much of "Shutdown" the guest has written so far

    def __init__(self, request_exit: Callable[[int], None]) -> None:
        super().__init__()
        self._request_exit = request_exit
        self.matched = 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.guest_error(f"{size}-byte write (the shutdown port takes bytes)")
            return
        if value != SHUTDOWN_STRING[self.matched]:
            self.matched = 0
            return
        self.matched += 1
        if self.matched == len(SHUTDOWN_STRING):
            self.matched = 0
            self._request_exit(0)
