"""Snapshot state of a PCI function's configuration space and MSI/MSI-X capabilities (pci/function.py).

Only what the guest can change is taken from a saved configuration space: the bits its write masks make
writable or write-1-to-clear (COMMAND, BARs, Interrupt Line, MSI/MSI-X control, address, data, mask...).
The read-only bytes (IDs, class, capability layout) stay as this build of the function made them, so a
state cannot turn one device into another. The few read-only bits a device itself sets (INTx status, MSI
pending bits) are saved apart and put back through the device's own paths, which also re-drive its line.
"""

from __future__ import annotations

from typing import Any

from ..core.state import check_keys, take_bytes, take_int
from .config import CONFIG_SPACE_SIZE, ConfigSpace
from .msi import _ENTRY_WMASK as ENTRY_WMASK
from .msi import MSIX_ENTRY_SIZE, MsiCapability, MsixCapability


def merge_config(config: ConfigSpace, saved: bytes) -> None:
    """Take the guest-writable bits of ``saved`` (256 bytes) into ``config``, keep the rest."""
    with config._lock:
        for at in range(CONFIG_SPACE_SIZE):
            writable = config.wmask[at] | config.w1cmask[at]
            config.data[at] = (config.data[at] & ~writable | saved[at] & writable) & 0xFF


def save_msi(msi: MsiCapability | None, msix: MsixCapability | None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if msi is not None:
        state["msi_pending"] = msi.pending
    if msix is not None:
        with msix._lock:
            state["msix_table"], state["msix_pba"] = bytes(msix.table), bytes(msix.pba)
    return state


def load_msi(msi: MsiCapability | None, msix: MsixCapability | None, state: object, who: str) -> None:
    """Checks everything first, then puts the MSI pending bits and the MSI-X table and PBA back."""
    keys = (["msi_pending"] if msi is not None else []) + (["msix_table", "msix_pba"] if msix is not None else [])
    saved = check_keys(state, keys, f"{who} MSI")
    pending = take_int(saved, "msi_pending", who, msi.vectors) if msi is not None else 0
    if msix is not None:
        table = take_bytes(saved, "msix_table", who, msix.table_size)
        pba = take_bytes(saved, "msix_pba", who, msix.pba_size)
        with msix._lock:  # each entry through the guest's write mask: reserved bits stay as the device made them
            for at, byte in enumerate(table):
                mask = ENTRY_WMASK[at % MSIX_ENTRY_SIZE]
                msix.table[at] = msix.table[at] & ~mask | byte & mask
            msix.pba[:] = pba
    if msi is not None and msi.per_vector_mask:
        msi.config.set(msi.pending_offset, 4, pending)
