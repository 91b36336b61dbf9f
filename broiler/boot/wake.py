"""Where a CPU resumes from S3: the FACS waking vectors (ACPI 6.5 §5.2.10), read as firmware reads them.

- X_Firmware_Waking_Vector (offset 24) non-zero: 32-bit protected mode, paging off, flat segments, at that
  address. Our FACS leaves 64BIT_WAKE_SUPPORTED_F clear, so an OSPM's 64BIT_WAKE_F asks for nothing more.
  A vector at or above 4 GiB cannot be reached that way and is ignored.
- otherwise Firmware_Waking_Vector (offset 12): real mode, CS = vector >> 4, IP = vector & 0xF (SeaBIOS
  under QEMU honours only this one).

KVM-free: the machine (vmm/sleep.py) reads the FACS from guest RAM and enters the returned state.
"""

from __future__ import annotations

import struct

from .entry import EntryState, protected_mode_state, real_mode_state

FACS_WAKING_VECTOR = 12
FACS_X_WAKING_VECTOR = 24
FACS_SIZE = 64


def resume_entry(facs: bytes) -> EntryState:
    """The BSP's state on resume, from the 64 bytes of the FACS (all-zero bytes: real mode at 0:0)."""
    (vector,) = struct.unpack_from("<I", facs, FACS_WAKING_VECTOR)
    (x_vector,) = struct.unpack_from("<Q", facs, FACS_X_WAKING_VECTOR)
    if 0 < x_vector < 1 << 32:
        return protected_mode_state(x_vector, regs={})
    return real_mode_state(vector >> 4, vector & 0xF)
