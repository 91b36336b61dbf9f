"""The Python hosts of the bench guest: a bare loop, and broiler itself, on the same VM.

All build the VM with broiler's ``Machine`` (same memory, irqchip, CPUID, loader), so the only
difference between the columns is what runs after KVM_RUN returns. broiler's columns run
``Machine.run`` unchanged: its own vCPU threads, event loop and doorbells. Column (c) is the loop
broiler picks by itself (the compiled one where broiler/core/_fastexit.c was built); column (d)
switches the same threads to their pure-Python loop (``VcpuThread.compiled = False``, what
``BROILER_PURE_PYTHON=1`` does). Nothing here copies broiler's loop, so nothing can drift from it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core import vcpu as vcpu_module
from ..core.bus import Device
from ..guests import packaged_guest
from ..kvm import Vcpu, abi
from ..vmm.machine import Machine, MachineConfig
from .driver import BatchDriver
from .guest import (
    BENCH_PARAMS,
    COALESCED,
    COALESCED_MMIO,
    COALESCED_SIZE,
    CTRL_PORT,
    DEVICE_SIZE,
    DOORBELL_PORT,
    FLAG_OFFSET,
    GUEST_NAME,
    IOEVENTFD,
    IOEVENTFD_MMIO,
    IOEVENTFD_PORT,
    PINGPONG,
    SYNC_MMIO,
    SYNC_PORT,
    Batch,
    Path,
)

RUN_TIMEOUT = 600.0


class BenchDevice(Device):
    """The registered Python device of the sync rows: as little as a device can do."""

    name = "bench"

    state_fields = ("value",)

    def __init__(self, name: str = "bench") -> None:
        super().__init__()
        self.name = name
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value


class ControlDevice(Device):
    """The guest's batch-control port on broiler's bus: the value written is the vCPU index."""

    name = "bench-control"
    state_fields = ()  # the batch state is the benchmark's, never snapshotted

    def __init__(self, driver: BatchDriver) -> None:
        super().__init__()
        self.driver = driver

    def write(self, offset: int, size: int, value: int) -> None:
        self.driver.control(value)  # after the last batch the guest ends itself through port 0xF4


OWN_BUCKET_NS = 25  # core/_fastexit.c's histogram of broiler's own time per exit


def own_time_probe() -> Callable[[], tuple[int, ...]] | None:
    """The compiled loop's sampled own-time counter (core/_fastexit.c own_time), where it is built."""
    module = vcpu_module._fastexit
    return module.own_time if module is not None else None  # type: ignore[no-any-return]


def compiled_loop_built() -> bool:
    """Whether broiler's compiled exit loop exists here (then columns (c) and (d) differ)."""
    return importlib.util.find_spec("broiler.core._fastexit") is not None


def new_machine(cpus: int, mem_size: int) -> Machine:
    """A Machine with the bench guest loaded; every vCPU enters it at once (the flat64 contract:
    RDI = its index, its own stack; no INIT/SIPI)."""
    m = Machine(MachineConfig(mem_size=mem_size, cpus=cpus, serial_output=lambda _b: None))
    try:
        m.load_flat64(packaged_guest(GUEST_NAME))
    except BaseException:
        m.close()
        raise
    m.add_pio(SYNC_PORT, 4, BenchDevice("bench-pio"))
    m.add_mmio(SYNC_MMIO, DEVICE_SIZE, BenchDevice("bench-mmio"))
    return m


@dataclass
class HostResult:
    times_ns: list[list[int]]
    first_exit_ns: int = 0
    doorbell_stamps_ns: list[int] = field(default_factory=list)
    exit_status: int | None = None
    own_per_batch: list[list[int]] = field(default_factory=list)  # the compiled loop's own-time histogram, per batch


# -- (c) and (d): broiler itself -------------------------------------------------------------------
def run_broiler(
    batches: list[Batch], paths: list[Path], cpus: int, mem_size: int, *, pure_python: bool = False, clock: str = "wall"
) -> HostResult:
    m = new_machine(cpus, mem_size)
    try:
        if pure_python:
            for thread in m.threads:
                thread.compiled = False
        probe = own_time_probe() if cpus == 1 and not pure_python else None  # the counter is process-wide
        driver = BatchDriver(m.memory.view, batches, cpus, clock, probe)
        m.add_pio(CTRL_PORT, 4, ControlDevice(driver))
        kinds = {p.kind for p in paths}
        stamps: list[int] = []
        flag = m.memory.view(BENCH_PARAMS + FLAG_OFFSET, 4).cast("I")
        if IOEVENTFD in kinds:
            for pio, addr in ((True, IOEVENTFD_PORT), (False, IOEVENTFD_MMIO)):
                m.doorbells.add(pio=pio, addr=addr, length=4, datamatch=None, callback=_ignore, owner="bench")
        if COALESCED in kinds:
            m.add_mmio(COALESCED_MMIO, COALESCED_SIZE, BenchDevice("bench-coalesced"), coalesced=True)
        if PINGPONG in kinds:
            now = time.perf_counter_ns

            def ring(kicks: int) -> None:
                stamps.append(now())
                flag[0] = 1

            m.doorbells.add(pio=True, addr=DOORBELL_PORT, length=4, datamatch=None, callback=ring, owner="bench")
        status = m.run(timeout=RUN_TIMEOUT)
        if not driver.done.is_set():
            raise RuntimeError(f"broiler's run ended before the schedule did: {m.exit_reason} (status {status})")
        flag.release()
        driver.release()
        return HostResult(driver.times, driver.first_exit_ns, stamps, status, driver.probed if probe else [])
    finally:
        m.close()


def _ignore(kicks: int) -> None:
    return None


# -- (b) the bare Python loop ----------------------------------------------------------------------
@dataclass
class LoopContext:
    """What one vCPU's loop needs, with every view created before the loop starts."""

    machine: Machine
    cpu: int
    fd: int
    driver: BatchDriver
    u8: memoryview
    u16: memoryview
    u32: memoryview
    u64: memoryview
    ring32: memoryview | None
    ring64: memoryview | None

    def release(self) -> None:
        for v in (self.u8, self.u16, self.u32, self.u64, self.ring32, self.ring64):
            if v is not None:
                v.release()


def bare_loop(ctx: LoopContext) -> None:
    """KVM_RUN and the least decoding that lets the guest go on: no bus, no device, no stats.

    ``ioctl(fd, KVM_RUN)`` without a third argument, as broiler's own loop calls it (core/vcpu.py says
    why: an argument costs a failed buffer parse per call)."""
    ioctl, run, fd, cpu = fcntl.ioctl, abi.KVM_RUN, ctx.fd, ctx.cpu
    u8, u16, u32, u64 = ctx.u8, ctx.u16, ctx.u32, ctx.u64
    ring32, ring64 = ctx.ring32, ctx.ring64
    control = ctx.driver.control
    exit_io, exit_mmio, ring_max = abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO, abi.KVM_COALESCED_MMIO_MAX
    sink = 0
    while True:
        ioctl(fd, run)
        if ring32 is not None and ring64 is not None:
            first = ring32[0]
            while first != ring32[1]:
                sink = ring64[3 + first * 3]  # entry = 3 u64 words after the 8-byte header; data is word 2
                first = (first + 1) % ring_max
                ring32[0] = first
        reason = u32[2]
        if reason == exit_io:
            if u16[17] == CTRL_PORT:
                if not control(cpu):
                    return
            elif not u8[32]:
                u32[u64[5] >> 2] = sink & 0  # IN: the guest gets zeros (4-byte, count 1 in this guest)
        elif reason == exit_mmio:
            if not u8[52]:
                u64[5] = 0
        else:
            raise RuntimeError(f"bare loop: unexpected exit reason {reason} on vCPU {cpu}")


def run_bare(batches: list[Batch], paths: list[Path], cpus: int, mem_size: int, clock: str = "wall") -> HostResult:
    m = new_machine(cpus, mem_size)
    efds: list[int] = []
    contexts: list[LoopContext] = []
    stop_doorbell = threading.Event()
    try:
        driver = BatchDriver(m.memory.view, batches, cpus, clock)
        m.add_pio(CTRL_PORT, 4, ControlDevice(driver))  # only loops that dispatch through the bus use it
        kinds = {p.kind for p in paths}
        doorbell_thread = _bare_doorbells(m, kinds, efds, stop_doorbell)
        contexts = [_loop_context(m, k, vcpu, driver, COALESCED in kinds) for k, vcpu in enumerate(m.vcpus)]
        _run_bare_loops(contexts, driver)
        if doorbell_thread is not None:
            stop_doorbell.set()
            os.eventfd_write(efds[-1], 1)
            doorbell_thread.join(timeout=5)
        driver.release()
        return HostResult(driver.times, driver.first_exit_ns)
    finally:
        for c in contexts:
            c.release()
        m.close()
        for fd in efds:
            os.close(fd)


def _bare_doorbells(m: Machine, kinds: set[str], efds: list[int], stop: threading.Event) -> threading.Thread | None:
    """The ioeventfds, coalesced zone and ping-pong reader thread the bare loop's paths need."""
    if IOEVENTFD in kinds:
        for pio, addr in ((True, IOEVENTFD_PORT), (False, IOEVENTFD_MMIO)):
            efds.append(os.eventfd(0, os.EFD_CLOEXEC))
            m.vm.ioeventfd(efds[-1], addr, 4, pio=pio, datamatch=None)
    if COALESCED in kinds:
        m.vm.register_coalesced(COALESCED_MMIO, COALESCED_SIZE)
    if PINGPONG not in kinds:
        return None
    efds.append(os.eventfd(0, os.EFD_CLOEXEC))
    m.vm.ioeventfd(efds[-1], DOORBELL_PORT, 4, pio=True, datamatch=None)
    flag = m.memory.view(BENCH_PARAMS + FLAG_OFFSET, 4)
    thread = threading.Thread(target=_doorbell_reader, name="bench-doorbell", daemon=True, args=(efds[-1], flag, stop))
    thread.start()
    return thread


def _loop_context(m: Machine, k: int, vcpu: Vcpu, driver: BatchDriver, coalesced: bool) -> LoopContext:
    page = memoryview(vcpu.run_page)
    ring = page[vcpu.coalesced_page * 4096 : (vcpu.coalesced_page + 1) * 4096] if coalesced else None
    return LoopContext(
        m,
        k,
        vcpu.fd,
        driver,
        page.cast("B"),
        page.cast("H"),
        page.cast("I"),
        page.cast("Q"),
        ring.cast("I") if ring else None,
        ring.cast("Q") if ring else None,
    )


def _run_bare_loops(contexts: list[LoopContext], driver: BatchDriver) -> None:
    """One thread per vCPU running bare_loop; the first error is raised after every thread ended."""
    errors: list[BaseException] = []

    def main(ctx: LoopContext) -> None:
        try:
            bare_loop(ctx)
        except BaseException as exc:  # reported by the caller, after the other vCPUs are released
            errors.append(exc)
            driver.release()

    threads = [threading.Thread(target=main, args=(c,), name=f"bench-vcpu{c.cpu}") for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _doorbell_reader(efd: int, flag_bytes: memoryview, stop: threading.Event) -> None:
    flag = flag_bytes.cast("I")
    while not stop.is_set():
        os.eventfd_read(efd)
        flag[0] = 1
    flag.release()
    flag_bytes.release()
