"""Flat segment descriptors as KVM_SET_SREGS wants them (one helper for the host probe and the syscall assist)."""

from __future__ import annotations

from ..x86 import SEG_CODE_XR, SEG_DATA_RW
from .structs import kvm_segment


def flat_segment(selector: int, *, code: bool, long_mode: bool = True, dpl: int = 0) -> kvm_segment:
    """Base 0, limit 4 GiB, present: execute/read code (64-bit in ``long_mode``) or read/write data with
    B set. What SYSCALL loads into CS/SS (SDM: it never reads the GDT) is exactly this with DPL 0."""
    wide = code and long_mode
    return kvm_segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=SEG_CODE_XR if code else SEG_DATA_RW,
        present=1,
        dpl=dpl,
        db=0 if wide else 1,
        s=1,
        l=int(wide),
        g=1,
    )
