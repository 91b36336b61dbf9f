"""Plain-text tables of what the guest did: IO exits per device, unmapped accesses, exits by reason."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..core.bus import ADDRESS_LIMIT
from ..kvm import abi
from ..vmm.virtio import virtio_stats

if TYPE_CHECKING:
    from ..vmm.machine import Machine


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def owner_name(owner: object) -> str:
    """A doorbell's owner as `broiler layout` names it (a PCI function's name, a demo's string)."""
    name = getattr(owner, "name", None)
    return name if isinstance(name, str) else str(owner)


def device_rows(machine: Machine) -> list[dict[str, object]]:
    """One record per registered region that saw any traffic: the numbers behind `io_table`."""
    kicks = machine.doorbells.kicks_by_owner
    rows = []
    for bus in (machine.pio_bus, machine.mmio_bus):
        for r in bus.regions():
            st, dev = r.stats, r.device
            line = getattr(dev, "line", None)
            row = {
                "device": r.name,
                "bus": bus.name,
                "base": r.base,
                "size": r.size,
                "p99_ns": st.percentile_ns(0.99),
                "irq": getattr(line, "gsi", None),
                "reads": st.reads,
                "writes": st.writes,
                "exits": st.count,
                "ns": st.ns,
                "timed": st.timed,
                "coalesced": st.coalesced,
                "doorbell_kicks": kicks.get(r.owner, kicks.get(r.name, 0)),
                "completions": getattr(dev, "completions", None),
                "irqs_raised": getattr(line, "raised", None),
                "guest_errors": dev.guest_errors,
            }
            if st.count or st.coalesced or row["doorbell_kicks"]:
                rows.append(row)
    return rows


def io_table(machine: Machine) -> list[str]:
    rows = []
    for d in device_rows(machine):
        width = 4 if d["bus"] == "pio" else 8
        exits = int(d["exits"])  # type: ignore[call-overload]
        timed = int(d["timed"])  # type: ignore[call-overload]
        mean = f"{int(d['ns']) / timed / 1000:.2f}" if timed else "-"  # type: ignore[call-overload]
        rows.append(
            [
                str(d["device"]),
                f"{d['bus']} {d['base']:0{width}x}",
                "-" if d["irq"] is None else str(d["irq"]),
                f"{exits} ({d['reads']}r/{d['writes']}w)",
                mean,
                str(d["doorbell_kicks"] or "-"),
                str(d["coalesced"] or "-"),
                "-" if d["completions"] is None else str(d["completions"]),
                "-" if d["irqs_raised"] is None else str(d["irqs_raised"]),
                str(d["guest_errors"]),
            ]
        )
    lines = [
        "IO per device. sync exits: the vCPU left KVM_RUN and waited for the handler (mean µs: time in",
        "the Python handler, sampled 1 in 16); doorbell kicks (ioeventfd) and coalesced writes (ring) did",
        "not exit.",
    ]
    lines += _table(
        [
            "device",
            "bus address",
            "irq",
            "sync exits",
            "mean µs",
            "doorbell kicks",
            "coalesced",
            "completions",
            "irqs",
            "guest errors",
        ],
        rows,
    )
    lines += virtio_table(virtio_stats(machine.pci))
    for bus in (machine.pio_bus, machine.mmio_bus):
        unmapped = bus.unmapped_total
        straddled = bus.straddled_total
        if unmapped or straddled:
            lines.append(
                f"{bus.name}: {unmapped} unmapped accesses at {len(bus.unmapped)}"
                f"{'+' if len(bus.unmapped) >= ADDRESS_LIMIT else ''} addresses, "
                f"{straddled} straddling accesses"
            )
    return lines


def virtio_table(virtio: dict[str, dict[str, Any]]) -> list[str]:
    """One row per virtio function: where, transport, status, each queue's avail/used index, counters.
    "bytes in" went into guest memory (disk reads, random bytes, console input), "bytes out" left it."""
    rows = []
    for name, v in virtio.items():
        rings = " ".join(f"{q['avail']}/{q['used']}" if q["active"] else "-" for q in v["queues"])
        rows.append(
            [
                name,
                f"00:{v['slot']:02x}.0 {v['transport']}",
                f"{v['status']:#04x}{' ok' if v['driver_ok'] else ''}",
                rings,
                *(str(v[key]) for key in ("kicks", "requests", "bytes_read", "bytes_written", "errors")),
            ]
        )
    headers = ["virtio", "slot", "status", "queues avail/used", "kicks", "requests", "bytes in", "bytes out", "errors"]
    return _table(headers, rows) if rows else []


def exit_table(machine: Machine) -> list[str]:
    lines = []
    for t in machine.threads:
        counts = {abi.EXIT_REASON_NAMES.get(i, str(i)): n for i, n in enumerate(t.exit_counts) if n}
        lines.append(f"vCPU {t.vcpu.id} exits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return lines


def snapshot_stats(machine: Machine) -> dict[str, object]:
    """Counters for `broiler stat` and --stats-json (JSON-ready)."""
    exits = {}
    for t in machine.threads:
        exits[str(t.vcpu.id)] = {abi.EXIT_REASON_NAMES.get(i, str(i)): n for i, n in enumerate(t.exit_counts) if n}
    return {
        "exits": exits,
        "unmapped": {"pio": machine.pio_bus.unmapped_total, "mmio": machine.mmio_bus.unmapped_total},
        "straddled": {"pio": machine.pio_bus.straddled_total, "mmio": machine.mmio_bus.straddled_total},
        "doorbells": [
            {
                "owner": owner_name(b.owner),
                "bus": "pio" if b.pio else "mmio",
                "addr": b.addr,
                "length": b.length,
                "datamatch": b.datamatch,
                "kicks": b.kicks,
                "wakeups": b.wakeups,
            }
            for b in machine.doorbells.history
        ],
        "msis_sent": machine.irqs.msis_sent,
        "virtio": virtio_stats(machine.pci),  # per function: slot, transport, status, queues, counters
        "emulated_in_userspace": {str(t.vcpu.id): dict(t.emulated) for t in machine.threads},
        "decisions": machine.decisions,
        "exit_status": machine.exit_status,
        "exit_reason": machine.exit_reason,
    }


def state_text(info: dict) -> str:  # type: ignore[type-arg]
    """ "running since 01:02:03" / "paused since ..." (local time) from a control-socket answer."""
    state = info.get("state", "running")
    since = info.get("state_since")
    return state if since is None else f"{state} since {time.strftime('%H:%M:%S', time.localtime(since))}"


def stat_table(snap: dict, previous: dict | None) -> list[str]:  # type: ignore[type-arg]
    """The `broiler stat` table: per device and path, counts, rates since the last sample, latency."""
    dt = snap["uptime"] - previous["uptime"] if previous else snap["uptime"]
    before = {(d["bus"], d["base"]): d for d in previous["devices"]} if previous else {}
    rows = []
    for d in snap["devices"]:
        old = before.get((d["bus"], d["base"]), {})
        exits = d["exits"]
        events = exits + d["doorbell_kicks"] + d["coalesced"]
        old_events = old.get("exits", 0) + old.get("doorbell_kicks", 0) + old.get("coalesced", 0)
        rate = (events - old_events) / dt if dt > 0 else 0.0
        mean = f"{d['ns'] / d['timed'] / 1000:.2f}" if d["timed"] else "-"
        p99 = f"{d['p99_ns'] / 1000:.1f}" if exits else "-"
        rows.append(
            [
                d["device"],
                f"{d['bus']} {d['base']:#x}",
                str(exits),
                str(d["doorbell_kicks"] or "-"),
                str(d["coalesced"] or "-"),
                "-" if d["irqs_raised"] is None else str(d["irqs_raised"]),
                "-" if d["completions"] is None else str(d["completions"]),
                f"{rate:.0f}",
                mean,
                p99,
            ]
        )
    lines = [f"VM {snap['name']}  up {snap['uptime']:.1f} s  {state_text(snap)}"]
    lines += _table(
        [
            "device",
            "where",
            "sync exits",
            "doorbell kicks",
            "coalesced",
            "irqs",
            "completions",
            "events/s",
            "mean µs",
            "p99 µs",
        ],
        rows,
    )
    lines += virtio_table(snap.get("virtio", {}))
    for vcpu, counts in snap["exits"].items():
        lines.append(f"vCPU {vcpu}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append(
        f"unmapped: pio {snap['unmapped']['pio']}, mmio {snap['unmapped']['mmio']}; MSIs sent {snap['msis_sent']}"
    )
    return lines
