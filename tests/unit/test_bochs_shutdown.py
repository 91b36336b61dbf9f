"""The "Shutdown" string on port 0x8900 (Bochs BIOS / old QEMU bochs_bios_write)."""

from __future__ import annotations

from broiler.core.bus import PioBus
from broiler.devices.legacy.bochs_shutdown import SHUTDOWN_PORT, BochsShutdown


def rig() -> tuple[PioBus, BochsShutdown, list[int]]:
    exits: list[int] = []
    dev = BochsShutdown(exits.append)
    bus = PioBus()
    bus.register(SHUTDOWN_PORT, 1, dev)
    return bus, dev, exits


def send(bus: PioBus, text: bytes) -> None:
    for b in text:
        bus.write(0x8900, 1, b)


def test_shutdown_string_exits_with_status_0() -> None:
    bus, _, exits = rig()
    send(bus, b"Shutdow")
    assert exits == []
    send(bus, b"n")
    assert exits == [0]
    send(bus, b"Shutdown")  # matching starts over after a request
    assert exits == [0, 0]


def test_a_wrong_byte_restarts_the_match_without_rechecking_it() -> None:
    bus, dev, exits = rig()
    send(bus, b"ShutXdown")
    assert exits == [] and dev.matched == 0
    send(bus, b"SShutdown")  # QEMU: the second 'S' resets, so no match here
    assert exits == []
    send(bus, b"Shutdown")
    assert exits == [0]


def test_wide_writes_and_reads() -> None:
    bus, dev, exits = rig()
    send(bus, b"Shut")
    bus.write(0x8900, 2, ord("d"))  # runs past the 1-port region: the bus drops it
    dev.write(0, 2, ord("d"))  # not a byte: counted, match state kept
    send(bus, b"down")
    assert exits == [0] and dev.guest_errors == 1 and bus.straddled[(0x8900, True)] == 1
    assert bus.read(0x8900, 1) == 0xFF
