"""Snapshot state of a virtio transport (transport.py) and its split virtqueues (queue.py).

Saved: what the driver configured (status, features, selectors, MSI-X vectors, config generation, ISR)
and each queue's configuration and ring position (size, ring addresses, enable, EVENT_IDX/INDIRECT,
whether it was activated, last_avail_idx, the used index and the last used index an interrupt decision
was made at). The rings themselves are in guest memory, which the snapshot carries.

A restored state is checked like a driver's writes: features must have been offered, a queue's size
must be a power of two within its maximum, and an activated queue's rings must lie inside guest RAM
(the same ``check_layout`` DRIVER_OK runs). Then, if the driver had set DRIVER_OK, the device is
activated again on the restored queues (without resetting their positions) and every active queue is
kicked once, so buffers the driver made available just before the snapshot are not left waiting.
"""

from __future__ import annotations

from typing import Any

from ...core.state import check_keys, take_bool, take_int, take_list, take_str
from ...errors import SnapshotError
from .queue import Virtqueue, VirtqueueError

_TRANSPORT = {
    "status": 8,
    "driver_features": 64,
    "device_feature_select": 32,
    "driver_feature_select": 32,
    "queue_select": 16,
    "config_vector": 16,
    "config_generation": 8,
    "isr": 2,
}
_QUEUE_INTS = {"size": 16, "desc": 64, "avail": 64, "used": 64, "vector": 16, "last_avail": 16, "used_idx": 16}
_QUEUE_FLAGS = ("enabled", "event_idx", "indirect", "active")


def save_queue(q: Virtqueue) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(q, name) for name in _QUEUE_INTS}
    state.update(enabled=q.enabled, event_idx=q.event_idx, indirect=q.indirect, active=q.active)
    state["signalled_used"] = q._signalled_used
    return state


def save_transport(t: Any) -> dict[str, Any]:
    """``t`` is a VirtioTransport (typed loosely: transport.py imports nothing from here)."""
    with t.lock:
        state: dict[str, Any] = {name: getattr(t, name) for name in _TRANSPORT}
        state["legacy_driver"] = t.legacy_driver
        state["needs_reset_reason"] = t.needs_reset_reason
        state["queues"] = [save_queue(q) for q in t.queues]
        return state


def _load_queue(q: Virtqueue, state: object, memory: Any, who: str) -> dict[str, Any]:
    """The checked values for ``q`` (nothing is set yet)."""
    saved = check_keys(state, (*_QUEUE_INTS, *_QUEUE_FLAGS, "signalled_used"), who)
    values: dict[str, Any] = {name: take_int(saved, name, who, bits) for name, bits in _QUEUE_INTS.items()}
    values.update({name: take_bool(saved, name, who) for name in _QUEUE_FLAGS})
    values["_signalled_used"] = take_int(saved, "signalled_used", who, 16)
    size = values["size"]
    if not 1 <= size <= q.max_size or size & (size - 1):
        raise SnapshotError(f"{who}: size {size} is not a power of two in 1..{q.max_size}")
    if values["active"]:
        probe = Virtqueue(q.max_size)
        probe.size, probe.desc, probe.avail, probe.used = size, values["desc"], values["avail"], values["used"]
        try:
            probe.check_layout(memory)
        except VirtqueueError as err:
            raise SnapshotError(f"{who}: {err}") from None
    return values


def load_transport(t: Any, state: object, who: str) -> None:
    """Put a transport and its queues back, re-activate the device if the driver had (see the module doc)."""
    saved = check_keys(state, (*_TRANSPORT, "legacy_driver", "needs_reset_reason", "queues"), who)
    values: dict[str, Any] = {name: take_int(saved, name, who, bits) for name, bits in _TRANSPORT.items()}
    values["legacy_driver"] = take_bool(saved, "legacy_driver", who)
    values["needs_reset_reason"] = take_str(saved, "needs_reset_reason", who, optional=True)
    if values["driver_features"] & ~t.offered:
        raise SnapshotError(f"{who}: driver features {values['driver_features']:#x} were not all offered")
    entries = take_list(saved, "queues", who, len(t.queues))
    if len(entries) != len(t.queues):
        raise SnapshotError(f"{who}: {len(entries)} queues saved, the device has {len(t.queues)}")
    queues = [
        _load_queue(q, e, t.memory, f"{who} queue {n}") for n, (q, e) in enumerate(zip(t.queues, entries, strict=True))
    ]
    with t.lock:
        t.device.reset()
        for name, value in values.items():
            setattr(t, name, value)
        for q, qvalues in zip(t.queues, queues, strict=True):
            active = qvalues.pop("active")
            for name, value in qvalues.items():
                setattr(q, name, value)
            q.memory = t.memory if active else None
        if t.driver_ok:
            t.device.activate(t.memory, t.queues, t, t.driver_features)
    # The INTx level the ISR implies is the PCI function's saved request (pci/function.py puts it back).


def kick_active_queues(t: Any) -> None:
    """Serve what the driver made available before the snapshot (a device may always look at its rings)."""
    if t.driver_ok:
        for index, q in enumerate(t.queues):
            if q.active:
                t.device.notify(index)
