"""Snapshot state of the PCI doorbell demos (pci_demos.DoorbellDemo): STATUS, ERROR_CODE and the job
engine, whose run in flight is scheduled again on restore so its completion interrupt still comes.
Kept apart from pci_demos.py (which imports this) so that module stays one page of device."""

from __future__ import annotations

from typing import Any

from ...core.state import check_keys, take_int
from ...errors import SnapshotError

LATCHED_STATUS = 0x3  # DONE | ERROR (pci_demos.py): BUSY is the engine's, never stored


def save_doorbell_demo(demo: Any) -> dict[str, Any]:
    with demo._state:
        return {"status": demo.status, "error_code": demo.error_code, "engine": demo.engine.save_state()}


def load_doorbell_demo(demo: Any, state: object) -> None:
    saved = check_keys(state, ("status", "error_code", "engine"), demo.name)
    status = take_int(saved, "status", demo.name, 8)
    if status & ~LATCHED_STATUS:
        raise SnapshotError(f"{demo.name}: status {status:#x} has bits the device never sets")
    error_code = take_int(saved, "error_code", demo.name, 32)
    demo.engine.load_state(saved["engine"], demo.name)
    with demo._state:
        demo.status, demo.error_code = status, error_code
