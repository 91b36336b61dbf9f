"""PVH boot: struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).

The PVH entry (the ELF note XEN_ELFNOTE_PHYS32_ENTRY) is entered in 32-bit protected mode with
paging off and EBX = the start_info address; see entry.pvh_entry_state(). It is the path that got
a stock Debian kernel furthest on this host (docs/linux.md).

    hvm_start_info (56 bytes, version 1):
      0 u32 magic 0x336ec578   4 u32 version   8 u32 flags   12 u32 nr_modules
     16 u64 modlist_paddr     24 u64 cmdline_paddr          32 u64 rsdp_paddr
     40 u64 memmap_paddr      48 u32 memmap_entries         52 u32 reserved
    hvm_modlist_entry (32 bytes): u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved
    hvm_memmap_table_entry (24 bytes): u64 addr, u64 size, u32 type (e820 numbering), u32 reserved
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ...core.memory import E820Entry
from ...errors import ConfigError
from .layout import PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR

HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1
START_INFO_SIZE = 56
MODLIST_ENTRY_SIZE = 32
MEMMAP_ENTRY_SIZE = 24


def build_start_info(
    *,
    cmdline_addr: int,
    e820: Sequence[E820Entry],
    initrd: tuple[int, int] | None = None,
    rsdp_addr: int = 0,
    start_info_addr: int = PVH_START_INFO_ADDR,
    modlist_addr: int = PVH_MODLIST_ADDR,
    memmap_addr: int = PVH_MEMMAP_ADDR,
) -> list[tuple[int, bytes]]:
    """The (guest-physical address, bytes) writes for a PVH boot; the initrd becomes module 0."""
    if len(e820) > PVH_MEMMAP_MAX:
        raise ConfigError(f"{len(e820)} memory map entries; the PVH area holds {PVH_MEMMAP_MAX}")
    nr_modules = 1 if initrd else 0
    info = struct.pack(
        "<IIIIQQQQII",
        HVM_START_MAGIC,
        HVM_START_VERSION,
        0,
        nr_modules,
        modlist_addr if initrd else 0,
        cmdline_addr,
        rsdp_addr,
        memmap_addr,
        len(e820),
        0,
    )
    memmap = b"".join(struct.pack("<QQII", e.addr, e.size, e.type, 0) for e in e820)
    writes = [(start_info_addr, info), (memmap_addr, memmap)]
    if initrd:
        writes.append((modlist_addr, struct.pack("<QQQQ", initrd[0], initrd[1], 0, 0)))
    return writes
