"""bzImage parsing and extraction of the compressed vmlinux inside it.

Field offsets are those of ``struct setup_header`` in the x86 boot protocol
(Documentation/arch/x86/boot.rst): the header starts at file offset 0x1F1 and ends at
0x202 + the byte at 0x201 (the target of the short jump at 0x200), so newer fields are only read
when that length says they exist.

Why extract the payload: under this host's instruction-emulating KVM the kernel's own decompressor
costs ~90 s; decompressing in Python and booting the ELF directly skips it.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import lz4.block
import zstandard

from ...errors import ConfigError

HEADER_START = 0x1F1
BOOT_FLAG = 0xAA55
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x0206
SETUP_HEADER_MAX_END = 0x280  # the zero page's hdr field is 0x1F1..0x290 minus padding

# loadflags
LOADED_HIGH = 0x01
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# xloadflags (protocol 2.12)
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
XLF_EFI_HANDOVER_32 = 0x04
XLF_EFI_HANDOVER_64 = 0x08
XLF_EFI_KEXEC = 0x10

ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True, slots=True)
class BzImage:
    """A parsed bzImage. Offsets are file offsets unless named otherwise."""

    protocol: int  # e.g. 0x020F for 2.15
    setup_sects: int  # already corrected: 0 means 4
    setup_size: int  # (setup_sects + 1) * 512: the real-mode part, boot sector included
    syssize: int  # protected-mode part in bytes
    loadflags: int
    code32_start: int
    initrd_addr_max: int  # highest address the initrd's last byte may occupy
    kernel_alignment: int
    relocatable: bool
    min_alignment: int  # log2, protocol 2.10
    xloadflags: int
    cmdline_size: int  # maximum command line length without the NUL
    payload_offset: int  # relative to the protected-mode part (as in the header)
    payload_length: int
    pref_address: int
    init_size: int  # memory the kernel needs from its load address until it runs
    handover_offset: int
    header_end: int  # file offset one past the last setup_header byte
    data: bytes = field(repr=False, compare=False)

    @property
    def kernel_64(self) -> bool:
        """True if the kernel has the 64-bit entry point at load address + 0x200."""
        return bool(self.xloadflags & XLF_KERNEL_64)

    @property
    def can_be_loaded_above_4g(self) -> bool:
        return bool(self.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G)

    @property
    def setup_header(self) -> bytes:
        """The setup_header bytes exactly as the kernel declared them (file 0x1F1 .. header_end)."""
        return self.data[HEADER_START : self.header_end]

    @property
    def protected_mode_kernel(self) -> bytes:
        """What a loader copies to the kernel load address: the file after the setup sectors."""
        return self.data[self.setup_size :]

    @property
    def payload(self) -> bytes:
        start = self.setup_size + self.payload_offset
        return self.data[start : start + self.payload_length]

    @property
    def protocol_text(self) -> str:
        return f"{self.protocol >> 8}.{self.protocol & 0xFF:02d}"


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x206 and data[0x202:0x206] == HDRS_MAGIC


def parse_bzimage(data: bytes, name: str = "kernel") -> BzImage:
    """Parse and validate a bzImage; ConfigError (one line) for anything that is not a usable one."""
    if len(data) < 0x206:
        raise ConfigError(f"{name}: too short to be a Linux kernel ({len(data)} bytes)")
    if data[0x202:0x206] != HDRS_MAGIC:
        raise ConfigError(f"{name}: not a Linux bzImage (no 'HdrS' boot header at 0x202)")
    if _u(data, 0x1FE, 2) != BOOT_FLAG:
        raise ConfigError(f"{name}: not a Linux bzImage (boot flag at 0x1FE is not 0xAA55)")
    protocol = _u(data, 0x206, 2)
    if protocol < MIN_PROTOCOL:
        raise ConfigError(
            f"{name}: boot protocol {protocol >> 8}.{protocol & 0xFF:02d} is older than 2.06, which broiler needs"
        )
    header_end = 0x202 + data[0x201]
    if header_end < 0x23C or header_end > SETUP_HEADER_MAX_END:
        raise ConfigError(f"{name}: implausible setup header length (ends at {header_end:#x})")
    if len(data) < header_end:
        raise ConfigError(f"{name}: truncated inside the setup header")
    setup_sects = data[0x1F1] or 4  # boot.rst: "if this field is 0, the real value is 4"
    setup_size = (setup_sects + 1) * 512
    syssize = _u(data, 0x1F4, 4) * 16

    def opt(off: int, size: int) -> int:  # a field newer than this kernel's header reads as 0
        return _u(data, off, size) if off + size <= header_end else 0

    bz = BzImage(
        protocol=protocol,
        setup_sects=setup_sects,
        setup_size=setup_size,
        syssize=syssize,
        loadflags=data[0x211],
        code32_start=_u(data, 0x214, 4),
        initrd_addr_max=opt(0x22C, 4) or 0x37FF_FFFF,  # boot.rst: default for protocols < 2.03
        kernel_alignment=opt(0x230, 4),
        relocatable=bool(opt(0x234, 1)),
        min_alignment=opt(0x235, 1),
        xloadflags=opt(0x236, 2),
        cmdline_size=opt(0x238, 4) or 255,
        payload_offset=opt(0x248, 4),
        payload_length=opt(0x24C, 4),
        pref_address=opt(0x258, 8) or 0x100000,
        init_size=opt(0x260, 4),
        handover_offset=opt(0x264, 4),
        header_end=header_end,
        data=bytes(data),
    )
    if len(data) < setup_size + syssize:
        raise ConfigError(
            f"{name}: truncated: the header promises {setup_size + syssize} bytes, the file has {len(data)}"
        )
    if bz.payload_length and setup_size + bz.payload_offset + bz.payload_length > len(data):
        raise ConfigError(f"{name}: truncated: the compressed kernel runs past the end of the file")
    return bz


def load_bzimage(path: str | Path) -> BzImage:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read kernel {str(p)!r}: {e.strerror}") from None
    return parse_bzimage(data, name=str(p))


# --- the compressed payload ---------------------------------------------------------------------

# Magic numbers of the formats Linux can compress the kernel with (arch/x86/boot/compressed).
COMPRESSION_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),  # LZ4 "legacy" frame, what `lz4 -l` writes
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),  # lzma-alone: properties byte 0x5D, then the dictionary size
    (b"\x89LZO", "lzo"),
    (ELF_MAGIC, "none"),
)


def detect_compression(payload: bytes) -> str:
    for magic, name in COMPRESSION_MAGICS:
        if payload.startswith(magic):
            return name
    return "unknown"


def _lz4_legacy(data: bytes) -> bytes:
    out = bytearray()
    pos = 4  # after the magic
    end = len(data)
    while pos + 4 <= end:
        size = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if size == 0x184C2102:  # a concatenated stream starts again with the magic
            continue
        if pos + size > end:
            # Linux appends the uncompressed size (4 bytes) after the stream: that is where we stop.
            break
        out += lz4.block.decompress(data[pos : pos + size], uncompressed_size=8 << 20)
        pos += size
    return bytes(out)


def _zstd(data: bytes) -> bytes:
    # Kernels use `zstd -22 --ultra`, whose window can exceed the library's default limit.
    d = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
    return d.decompress(data)


def decompress_payload(payload: bytes, name: str = "kernel") -> bytes:
    """Decompress a bzImage payload; trailing bytes (Linux appends the size) are ignored."""
    kind = detect_compression(payload)
    try:
        if kind == "none":
            return payload
        if kind == "gzip":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(payload)
        if kind == "lz4":
            return _lz4_legacy(payload)
        if kind == "zstd":
            return _zstd(payload)
    except ConfigError:
        raise
    except Exception as e:  # every library has its own error type; all mean "corrupt"
        raise ConfigError(f"{name}: the {kind}-compressed kernel is corrupt or truncated ({e})") from None
    if kind == "lzo":
        raise ConfigError(f"{name}: LZO-compressed kernels are not supported (use gzip, xz, lz4 or zstd)")
    head = payload[:4].hex(" ")
    raise ConfigError(f"{name}: unknown kernel compression (payload starts with {head})")


def extract_vmlinux(bz: BzImage, name: str = "kernel") -> bytes:
    """The vmlinux ELF inside a bzImage (protocol 2.08+ declares where the payload is)."""
    if bz.protocol < 0x0208 or not bz.payload_length:
        raise ConfigError(
            f"{name}: boot protocol {bz.protocol_text} does not describe its compressed payload (needs 2.08)"
        )
    out = decompress_payload(bz.payload, name)
    if not out.startswith(ELF_MAGIC):
        raise ConfigError(f"{name}: the decompressed payload is not an ELF file")
    expected = struct.unpack_from("<I", bz.payload, len(bz.payload) - 4)[0]
    # Linux's build appends the uncompressed length; a mismatch means a truncated stream.
    if expected != len(out) and detect_compression(bz.payload) != "none":
        raise ConfigError(
            f"{name}: the decompressed kernel has {len(out)} bytes, the image says {expected} (truncated or corrupt)"
        )
    return out
