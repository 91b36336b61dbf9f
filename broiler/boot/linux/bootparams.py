"""The zero page (struct boot_params, 4 KiB) for the 32/64-bit Linux boot protocol.

Offsets (arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/zero-page.rst):

    0x070  u64 acpi_rsdp_addr              0x0C0  u32 ext_ramdisk_image
    0x0C4  u32 ext_ramdisk_size            0x0C8  u32 ext_cmd_line_ptr
    0x1E8  u8  e820_entries                0x1EF  u8  sentinel (must stay 0)
    0x1F1  struct setup_header hdr         0x2D0  struct boot_e820_entry[128] (20 bytes each)

Inside hdr (file offsets of the bzImage = zero-page offsets): 0x1FA vid_mode, 0x210
type_of_loader, 0x211 loadflags, 0x218 ramdisk_image, 0x21C ramdisk_size, 0x224 heap_end_ptr,
0x228 cmd_line_ptr.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ...core.memory import E820Entry
from ...errors import ConfigError
from .bzimage import BOOT_FLAG, CAN_USE_HEAP, HDRS_MAGIC, KEEP_SEGMENTS, LOADED_HIGH, XLF_KERNEL_64

ZERO_PAGE_SIZE = 0x1000
HDR_OFFSET = 0x1F1
E820_ENTRIES_OFFSET = 0x1E8
E820_TABLE_OFFSET = 0x2D0
E820_MAX_ENTRIES = 128
SENTINEL_OFFSET = 0x1EF
ACPI_RSDP_OFFSET = 0x070
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
VID_MODE = 0x1FA
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
HEAP_END_PTR = 0x224
CMD_LINE_PTR = 0x228

LOADER_UNDEFINED = 0xFF  # boot.rst: "0xFF - undefined": broiler has no assigned loader id
VID_MODE_NORMAL = 0xFFFF
HEAP_END = 0xFE00  # the conventional value (only the real-mode setup uses the heap)


def synthetic_setup_header(cmdline_size: int = 2047) -> bytes:
    """A setup_header for a bare vmlinux that came without a bzImage (as firecracker does): protocol
    2.15, 64-bit, relocatable, 2 MiB alignment. Bytes 0x1F1..0x26C (the 2.15 header)."""
    h = bytearray(0x26C - HDR_OFFSET)

    def put(off: int, fmt: str, *v: int | bytes) -> None:
        struct.pack_into(fmt, h, off - HDR_OFFSET, *v)

    put(0x1FE, "<H", BOOT_FLAG)
    put(0x200, "<BB", 0xEB, 0x26C - 0x202)  # the short jump whose target ends the header
    put(0x202, "<4sH", HDRS_MAGIC, 0x020F)
    put(0x211, "<B", LOADED_HIGH)
    put(0x22C, "<IIBBHI", 0x7FFF_FFFF, 0x20_0000, 1, 21, XLF_KERNEL_64, cmdline_size)
    return bytes(h)


def encode_cmdline(cmdline: str, max_len: int) -> bytes:
    """The NUL-terminated command line; ConfigError if it is longer than the kernel accepts."""
    raw = cmdline.encode()
    if b"\0" in raw:
        raise ConfigError("the kernel command line contains a NUL byte")
    if len(raw) > max_len:
        raise ConfigError(f"the kernel command line is {len(raw)} bytes; this kernel accepts {max_len}")
    return raw + b"\0"


def build_zero_page(
    *,
    setup_header: bytes,
    cmdline_addr: int,
    e820: Sequence[E820Entry],
    initrd_addr: int = 0,
    initrd_size: int = 0,
    rsdp_addr: int = 0,
    keep_segments: bool = False,
) -> bytes:
    """boot_params for the 32- or 64-bit entry: the kernel's own header plus what a loader fills in.

    ``setup_header`` is BzImage.setup_header (or synthetic_setup_header()); it is copied unchanged
    except for the loader-owned fields, as boot.rst asks."""
    if len(setup_header) > E820_TABLE_OFFSET - HDR_OFFSET:
        raise ValueError("setup header too long")
    if len(e820) > E820_MAX_ENTRIES:
        raise ConfigError(f"{len(e820)} e820 entries; the zero page holds {E820_MAX_ENTRIES}")
    bp = bytearray(ZERO_PAGE_SIZE)
    bp[HDR_OFFSET : HDR_OFFSET + len(setup_header)] = setup_header
    bp[SENTINEL_OFFSET] = 0
    struct.pack_into("<H", bp, VID_MODE, VID_MODE_NORMAL)
    bp[TYPE_OF_LOADER] = LOADER_UNDEFINED
    flags = bp[LOADFLAGS] | CAN_USE_HEAP
    # KEEP_SEGMENTS only ever mattered to the 32-bit entry (and recent kernels ignore it); the
    # 64-bit entry loads its own GDT and segments anyway.
    bp[LOADFLAGS] = (flags | KEEP_SEGMENTS) if keep_segments else (flags & ~KEEP_SEGMENTS)
    struct.pack_into("<H", bp, HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", bp, CMD_LINE_PTR, cmdline_addr & 0xFFFF_FFFF)
    struct.pack_into("<I", bp, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    struct.pack_into("<II", bp, RAMDISK_IMAGE, initrd_addr & 0xFFFF_FFFF, initrd_size & 0xFFFF_FFFF)
    struct.pack_into("<II", bp, EXT_RAMDISK_IMAGE, initrd_addr >> 32, initrd_size >> 32)
    struct.pack_into("<Q", bp, ACPI_RSDP_OFFSET, rsdp_addr)
    bp[E820_ENTRIES_OFFSET] = len(e820)
    for i, e in enumerate(e820):
        struct.pack_into("<QQI", bp, E820_TABLE_OFFSET + 20 * i, e.addr, e.size, e.type)
    return bytes(bp)
