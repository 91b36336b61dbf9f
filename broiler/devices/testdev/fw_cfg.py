"""QEMU's fw_cfg, legacy port-IO interface only (docs/specs/fw_cfg.rst, hw/nvram/fw_cfg.c).

One 2-port region at 0x510, as in QEMU (the 8-bit data port overlaps the high half of the 16-bit
selector, so the two cannot be mapped apart):

- a 16-bit write (at 0x510) selects an item and rewinds its data offset to 0;
- a byte read (at 0x510 or 0x511: QEMU decodes both as data) returns the next byte of the selected
  item, and 0 once past its end or for an item that does not exist;
- byte writes are data writes, which QEMU ignores since v2.4; they are ignored here too;
- anything else (16-bit reads, 32-bit accesses) is invalid in QEMU: reads give 0, writes are
  dropped, both counted as guest errors.

No DMA interface (nothing at 0x514): FW_CFG_ID reads 1 ("traditional interface" only), so a guest
that checks bit 1 will not try DMA. Items: signature "QEMU", ID, a zero UUID, RAM size (u64), CPU
count and max CPUs (u16), NOGRAPHIC = 1 and BOOT_MENU = 0 (u16), and an empty file directory
(a big-endian count of 0). Multi-byte integers are little-endian, as QEMU's ``fw_cfg_add_i*``.
"""

from __future__ import annotations

import struct

from ...core.bus import Device

FW_CFG_PORT = 0x510
FW_CFG_PORT_SIZE = 2

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19

FW_CFG_VERSION = 0x01  # FW_CFG_ID bit 0: the traditional (port) interface


class FwCfg(Device):
    name = "fw_cfg"
    state_fields = ("selector:16", "offset:32")  # the items are built from the configuration

    def __init__(self, *, ram_size: int, cpus: int, max_cpus: int | None = None) -> None:
        super().__init__()
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", FW_CFG_VERSION),
            FW_CFG_UUID: bytes(16),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NOGRAPHIC: struct.pack("<H", 1),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_BOOT_MENU: struct.pack("<H", 0),
            FW_CFG_MAX_CPUS: struct.pack("<H", cpus if max_cpus is None else max_cpus),
            FW_CFG_FILE_DIR: struct.pack(">I", 0),
        }
        # QEMU selects the signature at reset.
        self.selector = FW_CFG_SIGNATURE
        self.offset = 0

    def select(self, key: int) -> None:
        self.selector = key & 0xFFFF
        self.offset = 0

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            self.guest_error(f"{size}-byte read (only byte reads are valid)")
            return 0
        data = self.items.get(self.selector, b"")
        if self.offset >= len(data):
            return 0
        self.offset += 1
        return data[self.offset - 1]

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 2:
            self.select(value)
        elif size != 1:  # byte writes: ignored data writes, as in QEMU >= 2.4
            self.guest_error(f"{size}-byte write (the selector is 16-bit)")
