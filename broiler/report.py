"""Plain-text tables of what the guest did: IO exits per device, unmapped accesses, exits by reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kvm import abi

if TYPE_CHECKING:
    from .machine import Machine


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def io_table(machine: Machine) -> list[str]:
    rows = []
    for bus in (machine.pio_bus, machine.mmio_bus):
        width = 4 if bus is machine.pio_bus else 8
        for r in bus.regions():
            st = r.stats
            if not st.count:
                continue
            mean = st.ns / st.count / 1000
            rows.append([r.name, f"{bus.name} {r.base:0{width}x}", str(st.count), str(st.reads), str(st.writes),
                         f"{st.ns / 1e6:.3f}", f"{mean:.2f}", str(getattr(r.device, "guest_errors", 0))])
    lines = ["IO exits handled per device (synchronous path: vCPU exit → Python handler → KVM_RUN)"]
    lines += _table(["device", "bus address", "exits", "reads", "writes", "total ms", "mean µs",
                     "guest errors"], rows)
    for bus in (machine.pio_bus, machine.mmio_bus):
        unmapped = sum(bus.unmapped.values())
        straddled = sum(bus.straddled.values())
        if unmapped or straddled:
            lines.append(f"{bus.name}: {unmapped} unmapped accesses at {len(bus.unmapped)} addresses, "
                         f"{straddled} straddling accesses")
    return lines


def exit_table(machine: Machine) -> list[str]:
    lines = []
    for t in machine.threads:
        counts = {abi.EXIT_REASON_NAMES.get(i, str(i)): n for i, n in enumerate(t.exit_counts) if n}
        lines.append(f"vCPU {t.vcpu.id} exits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return lines
