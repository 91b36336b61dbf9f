"""`broiler layout`: the guest-physical map and the port map, in /proc/iomem and /proc/ioports style."""

from __future__ import annotations

from ..core.bus import Bus
from ..core.memory import E820_RAM, PCI_HOLE_END, PCI_HOLE_START, MemoryMap


def _span(start: int, end: int, width: int) -> str:
    return f"{start:0{width}x}-{end - 1:0{width}x}"


def iomem(memory_map: MemoryMap, mmio_bus: Bus) -> list[str]:
    """Top-level entries (e820 RAM/reserved, the PCI hole) with devices nested under the hole."""
    top: list[tuple[int, int, str]] = []
    for e in memory_map.e820():
        top.append((e.addr, e.addr + e.size, "System RAM" if e.type == E820_RAM else "reserved"))
    top.append((PCI_HOLE_START, PCI_HOLE_END, "PCI hole"))
    children: list[tuple[int, int, str]] = [(r.start, r.end, r.name) for r in memory_map.reserved]
    children += [(r.base, r.end, r.name) for r in mmio_bus.regions()]
    lines = []
    for start, end, name in sorted(top):
        lines.append(f"{_span(start, end, 8)} : {name}")
        inner = sorted((c for c in children if start <= c[0] and c[1] <= end), key=lambda c: (c[0], -c[1]))
        lines += [f"{'  ' * (depth + 1)}{_span(s, e, 8)} : {n}" for depth, (s, e, n) in _nest(inner)]
    outside = [c for c in children if not any(s <= c[0] and c[1] <= e for s, e, _ in top)]
    lines += [f"{_span(s, e, 8)} : {n}" for s, e, n in sorted(outside)]
    return lines


def _nest(items: list[tuple[int, int, str]]) -> list[tuple[int, tuple[int, int, str]]]:
    """Pair each range with its depth: ranges inside an earlier one (BARs in the window) nest."""
    out: list[tuple[int, tuple[int, int, str]]] = []
    parents: list[tuple[int, int]] = []
    for s, e, n in items:
        while parents and not (parents[-1][0] <= s and e <= parents[-1][1]):
            parents.pop()
        out.append((len(parents), (s, e, n)))
        parents.append((s, e))
    return out


def ioports(pio_bus: Bus) -> list[str]:
    return [f"{_span(r.base, r.end, 4)} : {r.name}" for r in pio_bus.regions()]
