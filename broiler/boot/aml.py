"""Just enough AML (ACPI Machine Language, ACPI spec chapter 20) to write a small DSDT by hand.

Each helper returns encoded bytes; terms nest by concatenation. Names are 4-character NameSegs
(shorter ones are padded with '_', as ASL compilers do).
"""

from __future__ import annotations

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR = 0x5C  # '\'


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes; the encoded length counts its own bytes too."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            rest = total >> 4
            for _ in range(extra):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too large")


def name_seg(name: str) -> bytes:
    if not 1 <= len(name) <= 4 or not (name[0].isupper() or name[0] == "_"):
        raise ValueError(f"bad AML name segment {name!r}")
    return name.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """'\\_SB' or '\\_SB.PCI0' or 'PCI0'."""
    root = path.startswith("\\")
    segs = [name_seg(s) for s in path.lstrip("\\").split(".")]
    prefix = bytes([ROOT_CHAR]) if root else b""
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + b"\x2e" + b"".join(segs)  # DualNamePrefix
    return prefix + bytes([0x2F, len(segs)]) + b"".join(segs)  # MultiNamePrefix


def integer(value: int) -> bytes:
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise ValueError(f"AML integer {value:#x} does not fit 64 bits")


def string(text: str) -> bytes:
    return b"\x0d" + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03") as the DWord an ASL compiler emits (0x030AD041)."""
    if len(text) != 7:
        raise ValueError(f"bad EISA id {text!r}")
    c = [ord(ch) - 0x40 for ch in text[:3]]
    vendor = (c[0] << 10) | (c[1] << 5) | c[2]
    product = int(text[3:], 16)
    raw = vendor.to_bytes(2, "big") + product.to_bytes(2, "big")
    return integer(int.from_bytes(raw, "little"))


def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(seg: str, *terms: bytes) -> bytes:
    body = name_string(seg) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# --- resource descriptors (ACPI spec 6.4) for _CRS buffers ---------------------------------------

RES_PRODUCER_FIXED = 0x0C  # general flags: min and max fixed, positive decode, producer


def word_bus_number(lo: int, hi: int) -> bytes:
    return (
        bytes([0x88])
        + (13).to_bytes(2, "little")
        + bytes([2, RES_PRODUCER_FIXED, 0])
        + b"".join(v.to_bytes(2, "little") for v in (0, lo, hi, 0, hi - lo + 1))
    )


def word_io(lo: int, hi: int) -> bytes:
    # type-specific flags 3: the range covers ISA and non-ISA addresses
    return (
        bytes([0x88])
        + (13).to_bytes(2, "little")
        + bytes([1, RES_PRODUCER_FIXED, 3])
        + b"".join(v.to_bytes(2, "little") for v in (0, lo, hi, 0, hi - lo + 1))
    )


def dword_memory(lo: int, hi: int) -> bytes:
    # type-specific flags 1: read-write, non-cacheable
    return (
        bytes([0x87])
        + (23).to_bytes(2, "little")
        + bytes([0, RES_PRODUCER_FIXED, 1])
        + b"".join(v.to_bytes(4, "little") for v in (0, lo, hi, 0, hi - lo + 1))
    )


def io_port(base: int, size: int) -> bytes:
    """Small I/O port descriptor: 16-bit decode, fixed at ``base`` (min = max), ``size`` ports."""
    if not (0 <= base <= 0xFFFF and 1 <= size <= 0xFF and base + size <= 0x10000):
        raise ValueError(f"I/O range {base:#x}+{size} does not fit an I/O port descriptor")
    return bytes([0x47, 1]) + base.to_bytes(2, "little") * 2 + bytes([1, size])


def memory32_fixed(base: int, size: int) -> bytes:
    return (
        bytes([0x86]) + (9).to_bytes(2, "little") + bytes([1]) + base.to_bytes(4, "little") + size.to_bytes(4, "little")
    )


def resource_template(*descriptors: bytes) -> bytes:
    """A _CRS buffer: the descriptors and an End Tag whose checksum 0 means 'not checked'."""
    return buffer(b"".join(descriptors) + b"\x79\x00")
