"""fw_cfg legacy port interface, driven through a PioBus as a guest would (QEMU semantics)."""

from __future__ import annotations

import struct

import pytest

from broiler.core.bus import PioBus
from broiler.core.memory import MiB
from broiler.devices.testdev import fw_cfg as f
from broiler.devices.testdev.fw_cfg import FW_CFG_PORT, FW_CFG_PORT_SIZE, FwCfg


@pytest.fixture
def bus() -> PioBus:
    bus = PioBus()
    bus.register(FW_CFG_PORT, FW_CFG_PORT_SIZE, FwCfg(ram_size=128 * MiB, cpus=2), name="fw_cfg")
    return bus


def read_item(bus: PioBus, key: int, n: int) -> bytes:
    bus.write(0x510, 2, key)
    return bytes(bus.read(0x511, 1) for _ in range(n))


def test_key_numbers_match_qemu_header() -> None:
    assert (
        f.FW_CFG_SIGNATURE,
        f.FW_CFG_ID,
        f.FW_CFG_UUID,
        f.FW_CFG_RAM_SIZE,
        f.FW_CFG_NB_CPUS,
        f.FW_CFG_MAX_CPUS,
        f.FW_CFG_FILE_DIR,
    ) == (0x00, 0x01, 0x02, 0x03, 0x05, 0x0F, 0x19)


def test_items(bus: PioBus) -> None:
    assert read_item(bus, 0x0000, 4) == b"QEMU"
    assert struct.unpack("<I", read_item(bus, 0x0001, 4)) == (1,)  # port interface, no DMA
    assert read_item(bus, 0x0002, 16) == bytes(16)
    assert struct.unpack("<Q", read_item(bus, 0x0003, 8)) == (128 * MiB,)
    assert struct.unpack("<H", read_item(bus, 0x0005, 2)) == (2,)
    assert struct.unpack("<H", read_item(bus, 0x000F, 2)) == (2,)
    assert read_item(bus, 0x0019, 4) == bytes(4)  # big-endian count 0


def test_signature_is_selected_at_reset(bus: PioBus) -> None:
    assert bytes(bus.read(0x511, 1) for _ in range(4)) == b"QEMU"


def test_past_the_end_and_unknown_keys_read_zero(bus: PioBus) -> None:
    assert read_item(bus, 0x0000, 6) == b"QEMU\0\0"
    assert read_item(bus, 0x1234, 4) == bytes(4)
    assert read_item(bus, 0x8003, 4) == bytes(4)  # arch items: none here


def test_select_rewinds_and_selector_port_reads_data_too(bus: PioBus) -> None:
    read_item(bus, 0x0000, 2)
    bus.write(0x510, 2, 0x0000)
    assert bus.read(0x510, 1) == ord("Q") and bus.read(0x511, 1) == ord("E")


def test_invalid_accesses(bus: PioBus) -> None:
    dev = bus.find(0x510).device  # type: ignore[union-attr]
    bus.write(0x510, 2, 0)
    assert bus.read(0x510, 2) == 0  # as QEMU 7.2: 0, and the offset does not move
    assert bus.read(0x511, 1) == ord("Q")
    bus.write(0x511, 1, 0x55)  # data writes: ignored (QEMU >= 2.4)
    assert bus.read(0x511, 1) == ord("E")
    bus.write(0x510, 4, 0x0003)  # straddles 0x512: never reaches the device
    assert bus.read(0x511, 1) == ord("M")
    assert bus.read(0x511, 2) == 0xFFFF  # straddles: unmapped (QEMU splits: 0xff4d)
    assert dev.guest_errors == 1


def test_max_cpus_can_differ_from_cpus() -> None:
    dev = FwCfg(ram_size=4 * MiB, cpus=3, max_cpus=8)
    assert dev.items[0x0F] == struct.pack("<H", 8) and dev.items[0x05] == struct.pack("<H", 3)
