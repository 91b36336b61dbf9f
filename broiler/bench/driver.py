"""The host side of the bench guest's control port, shared by the two Python hosts.

At every control exit a vCPU thread calls ``control(cpu)``: it records how long that vCPU's batch took,
waits at a barrier until every vCPU has finished the batch (so a batch starts on all vCPUs together,
which is what makes the 2-vCPU numbers a scaling measurement), then writes the next batch into the
vCPU's parameter block. The work done here is the same for every batch, so it cancels out of ΔN.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .guest import BENCH_PARAMS, OP_STOP, PARAMS_STRIDE, Batch

BARRIER_TIMEOUT = 60.0
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}  # cpu: the vCPU thread's own CPU time


class BatchDriver:
    def __init__(
        self,
        view: Callable[[int, int], memoryview],
        batches: list[Batch],
        cpus: int,
        clock: str = "wall",
        probe: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        """``view(gpa, size)`` gives a writable view of guest RAM (GuestMemory.view); ``clock`` what a batch's
        time is: "wall" or "cpu" (the CPU time of the vCPU thread, which waiting for a core does not count)."""
        self._now = CLOCKS[clock]
        # probe(): cumulative counters (the compiled loop's own-time histogram); per batch, their growth
        self._probe = probe
        self._probe_start: tuple[int, ...] = ()
        self.probed: list[list[int]] = [[] for _ in batches]
        self.batches = batches
        self.cpus = cpus
        # u64 words of each block: [0] op (+pad), [1] n, [2] addr, [3] flag
        self.blocks = [view(BENCH_PARAMS + k * PARAMS_STRIDE, PARAMS_STRIDE).cast("Q") for k in range(cpus)]
        self.barrier = threading.Barrier(cpus, timeout=BARRIER_TIMEOUT)
        self.index = [0] * cpus
        self.start = [0] * cpus
        self.times = [[0] * cpus for _ in batches]
        self.first_exit_ns = 0
        self.done = threading.Event()

    def control(self, cpu: int) -> bool:
        """Hand out the next batch; False once the guest has been told to stop."""
        t = self._now()
        i = self.index[cpu]
        if i:
            self.times[i - 1][cpu] = t - self.start[cpu]
            if self._probe is not None:
                self.probed[i - 1] = [b - a for a, b in zip(self._probe_start, self._probe(), strict=True)]
        elif cpu == 0:
            self.first_exit_ns = t
        self.barrier.wait()
        block = self.blocks[cpu]
        if i >= len(self.batches):
            block[0] = OP_STOP
            self.done.set()
            return False
        b = self.batches[i]
        block[1] = b.n
        block[2] = b.addr
        block[0] = b.op
        self.index[cpu] = i + 1
        if self._probe is not None:
            self._probe_start = self._probe()
        self.start[cpu] = self._now()
        return True

    def release(self) -> None:
        self.barrier.abort()  # a vCPU that died must not leave the others waiting
        for block in self.blocks:
            block.release()
