"""isa-debug-exit (QEMU's convention): a write of value v ends the VM with status (v << 1) | 1.

The odd status can never be confused with broiler's own exit statuses, which are all even.
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.bus import Device, all_ones
from ...core.state import STATELESS

DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_SIZE = 4


class DebugExit(Device):
    name = "debug-exit"
    state_fields = STATELESS

    def __init__(self, request_exit: Callable[[int], None]) -> None:
        super().__init__()
        self._request_exit = request_exit

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._request_exit(((value << 1) | 1) & 0xFF)
