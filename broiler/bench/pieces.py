"""CPU cost of each piece of broiler's exit handling, without KVM: timeit on a fake kvm_run page.

These are warm-cache numbers (the same code run back to back); in the VM the same code runs right after
a world switch and costs more. They rank the pieces; the ladder (ladder.py) measures them in place.
"""

from __future__ import annotations

import timeit

from ..core.bus import PioBus
from ..kvm import abi
from .guest import SYNC_PORT
from .hosts import BenchDevice

NUMBER = 200_000


def measure(number: int = NUMBER) -> list[tuple[str, float]]:
    page = memoryview(bytearray(abi.RUN_SIZE))
    u8, u16, u32, u64 = page.cast("B"), page.cast("H"), page.cast("I"), page.cast("Q")
    u32[2] = abi.KVM_EXIT_IO
    u16[17], u8[33], u32[9], u64[5], u8[32] = SYNC_PORT, 4, 1, 1024, 1
    views = (None, u8, u16, None, u32, None, None, None, u64)
    bus = PioBus()
    device = BenchDevice()
    region = bus.register(SYNC_PORT, 4, device)
    bus.resolve(SYNC_PORT)

    class M:
        stopping = False

    ns: dict[str, object] = {
        "u8": u8,
        "u16": u16,
        "u32": u32,
        "u64": u64,
        "views": views,
        "bus": bus,
        "region": region,
        "device": device,
        "m": M(),
        "counts": [0] * 64,
        "ring32": u32,
        "port": SYNC_PORT,
        "view": u32,
        "perf": __import__("time").perf_counter_ns,
    }
    pieces = [
        ("empty statement (timeit floor)", "pass"),
        ("reason = u32[2]", "reason = u32[2]"),
        (
            "decode port, size, count, offset, dir, view",
            "port = u16[17]; size = u8[33]; count = u32[9]; offset = u64[5]; d = u8[32]; view = views[size]",
        ),
        ("stopping flag + counts[reason] += 1", "m.stopping; counts[2] += 1"),
        ("ring check (ring32[0] != ring32[1])", "ring32[0] != ring32[1]"),
        ("bus.cache.get(port) or bus.resolve(port)", "bus.cache.get(port) or bus.resolve(port)"),
        ("value = view[offset // size]", "view[1024 // 4]"),
        ("Region.write (straddle, 2 clocks, stats, device)", "region.write(port, 4, 7)"),
        ("device.write alone", "device.write(0, 4, 7)"),
        ("time.perf_counter_ns()", "perf()"),
    ]
    setup = "; ".join(f"{name} = g_{name}" for name in ns)  # locals, as in the vCPU loop
    glob = {f"g_{name}": value for name, value in ns.items()}
    out = []
    for name, stmt in pieces:
        t = min(timeit.repeat(stmt, setup, globals=glob, number=number, repeat=5))
        out.append((name, t / number * 1e9))
    return out


if __name__ == "__main__":
    for name, cost in measure():
        print(f"{cost:8.1f} ns  {name}")
