"""The vCPU thread: KVM_RUN, decode the exit from the shared kvm_run page, dispatch to the buses.

This is broiler's hot path. It reads ``kvm_run`` through memoryviews cast to u8/u16/u32/u64 that
are created once per vCPU, looks devices up in the bus's per-address cache (a dict hit after the
first access), and neither allocates nor logs per exit unless tracing is on. KVM_RUN goes through
``fcntl.ioctl``, which releases the GIL while the guest runs. KVM_RUN is issued as ``ioctl(fd, KVM_RUN)``,
never ``ioctl(fd, KVM_RUN, 0)``: given an argument, fcntl.ioctl first tries it as a writable and then
a read-only buffer, and each failed try raises and clears a TypeError (~1.1 µs per exit measured by
``broiler bench --breakdown``); left out, the argument is 0 with no parsing at all.

Exit handling:

=====================  ====================================================================
IO                     port bus; string IO (count > 1) walks the data page ``size`` bytes at a time
MMIO                   MMIO bus; the coalesced ring is drained first
HLT                    this vCPU stops (only seen without the in-kernel irqchip)
SHUTDOWN               triple fault: fatal, register dump
SYSTEM_EVENT           shutdown/reset end the VM with status 0; crash is fatal
INTERNAL_ERROR         the userspace emulator gets a chance (``Machine.emulate``), else fatal
FAIL_ENTRY, others     fatal, register dump
INTR (EINTR)           a kick: check whether the VM is stopping
=====================  ====================================================================

The compiled fast path: where ``broiler/core/_fastexit.c`` was built (setup.py builds it whenever a C
compiler and Python's headers are there; the build is optional), the loop hands KVM_RUN and the
decode of single PIO and 1/2/4/8-byte MMIO exits to C, which calls the same ``Region.read/write`` the
Python loop calls: stats, tracing and the bus rules are identical. Every other exit returns to
``_dispatch`` here. ``BROILER_PURE_PYTHON=1`` forces the Python loop (the fallback everywhere else);
``broiler bench`` measures both.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import exitcodes
from ..kvm import abi
from ..kvm.abi import buffer_address
from ..kvm.ioctls import Vcpu

try:  # the optional compiled exit loop (setup.py builds it where a C compiler is available)
    from . import _fastexit
except ImportError:  # pragma: no cover - depends on the build
    _fastexit = None

if TYPE_CHECKING:
    from ..vmm.machine import Machine

_EXIT_IO = abi.KVM_EXIT_IO
_EXIT_MMIO = abi.KVM_EXIT_MMIO
_KVM_RUN = abi.KVM_RUN


class VcpuThread:
    """Runs one vCPU until the machine stops; counts exits by reason."""

    def __init__(self, machine: Machine, vcpu: Vcpu) -> None:
        self.machine = machine
        self.vcpu = vcpu
        self.exit_counts = [0] * 64
        self.thread = threading.Thread(target=self._thread_main, name=f"broiler-vcpu{vcpu.id}", daemon=True)
        page = memoryview(vcpu.run_page)
        self._u8 = page.cast("B")
        self._u16 = page.cast("H")
        self._u32 = page.cast("I")
        self._u64 = page.cast("Q")
        self._views = (None, self._u8, self._u16, None, self._u32, None, None, None, self._u64)
        self.compiled = _fastexit is not None and os.environ.get("BROILER_PURE_PYTHON") != "1"
        ring_off = vcpu.coalesced_page * 4096
        self._ring = page[ring_off : ring_off + 4096] if vcpu.coalesced_page > 0 else None
        self._ring32 = self._ring.cast("I") if self._ring is not None else None
        self.stopped = threading.Event()
        self._calls: list[Callable[[], None]] = []  # run on this thread at the next kick
        self.emulated: dict[str, int] = {}  # instructions completed in userspace (Machine.emulate)
        self.code_changed_retries = 0  # consecutive re-runs because the code changed (boot/linux.py)

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_immediate_exit(self) -> None:
        """Make the next (or current, after a signal) KVM_RUN return at once."""
        self._u8[abi.RUN_IMMEDIATE_EXIT] = 1

    # -- the loop ----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self._loop()
        except Exception:
            sys.stderr.write(f"broiler: internal error on vCPU {self.vcpu.id}:\n{traceback.format_exc()}")
            self.machine.request_exit(exitcodes.INTERNAL, "internal error")
        finally:
            self.drain_coalesced()
            self.stopped.set()
            self.machine.vcpu_stopped(self)

    def _loop(self) -> None:
        if self.compiled:
            self._loop_compiled()
        else:
            self._loop_python()

    def _kicked(self) -> None:
        """KVM_RUN returned EINTR: a kick (stop, snapshot) or a stray signal."""
        self._u8[abi.RUN_IMMEDIATE_EXIT] = 0
        self.exit_counts[abi.KVM_EXIT_INTR] += 1
        if self._calls:
            self._run_calls()

    def _loop_python(self) -> None:
        machine = self.machine
        ioctl = fcntl.ioctl
        fd = self.vcpu.fd
        ring32 = self._ring32
        zones = machine.coalesced_zones  # appended to in place: a zone added later is seen at once
        drain = self.drain_coalesced
        dispatch = self._dispatch
        while not machine.stopping:
            try:
                ioctl(fd, _KVM_RUN)  # no third argument: see the module docstring
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    self._kicked()
                    continue
                raise
            if zones and ring32 is not None and ring32[0] != ring32[1]:  # no zone, no ring to look at
                drain()
            if not dispatch():
                return

    def _loop_compiled(self) -> None:
        """The same loop with the plain PIO/MMIO exits decoded in C (broiler/core/_fastexit.c); every
        other exit comes back here and goes through ``_dispatch`` like in the Python loop."""
        machine = self.machine
        run = _fastexit.run  # type: ignore[union-attr]
        args = (
            self.vcpu.fd,
            buffer_address(self.vcpu.run_page),
            buffer_address(self.vcpu.run_page) + self.vcpu.coalesced_page * 4096 if self._ring32 else 0,
            machine.coalesced_zones,
            machine.pio_bus,
            machine.mmio_bus,
            self.exit_counts,
        )
        ring32 = self._ring32
        while not machine.stopping:
            rc = run(*args)
            if rc < 0:
                if -rc in (errno.EINTR, errno.EAGAIN):
                    self._kicked()
                    continue
                raise OSError(-rc, os.strerror(-rc))
            if machine.coalesced_zones and ring32 is not None and ring32[0] != ring32[1]:
                self.drain_coalesced()
            if not self._dispatch():
                return

    def _dispatch(self) -> bool:
        """Handle the exit in the kvm_run page; False when this vCPU must stop."""
        u8, u32, u64 = self._u8, self._u32, self._u64
        reason = u32[2]
        self.exit_counts[reason] += 1
        if reason == _EXIT_IO:
            port = self._u16[17]
            size = u8[33]
            count = u32[9]
            view = self._views[size]
            index = u64[5] // size
            target = self.machine.pio_bus.cache.get(port) or self.machine.pio_bus.resolve(port)
            if u8[32]:
                for i in range(index, index + count):  # count > 1: string IO (rep outs/ins)
                    target.write(port, size, view[i])
            else:
                for i in range(index, index + count):
                    view[i] = target.read(port, size)
            return True
        if reason == _EXIT_MMIO:
            addr = u64[4]
            size = u32[12]
            bus = self.machine.mmio_bus
            target = bus.cache.get(addr) or bus.resolve(addr)
            if size in (1, 2, 4, 8):
                view = self._views[size]
                if u8[52]:
                    target.write(addr, size, view[40 // size])
                else:
                    view[40 // size] = target.read(addr, size)
            elif 0 < size <= 8:  # a fragment of a page-crossing access
                if u8[52]:
                    target.write(addr, size, int.from_bytes(u8[40 : 40 + size], "little"))
                else:
                    u8[40 : 40 + size] = target.read(addr, size).to_bytes(size, "little")
            return True
        return self._slow_exit(reason)

    def _slow_exit(self, reason: int) -> bool:
        """Exits that are not IO; returns False when this vCPU must stop."""
        machine = self.machine
        if reason == abi.KVM_EXIT_HLT:
            return False
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            kind = self._u32[abi.RUN_SYSTEM_EVENT_TYPE // 4]
            if kind in (abi.KVM_SYSTEM_EVENT_SHUTDOWN, abi.KVM_SYSTEM_EVENT_RESET):
                machine.request_exit(exitcodes.OK, "guest shutdown" if kind == 1 else "guest reset")
                return False
            self.fatal(f"system event {kind} (crash)")
            return False
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            suberror = self._u32[abi.RUN_INTERNAL_SUBERROR // 4]
            assist = machine.syscall_assist
            if suberror == abi.KVM_INTERNAL_ERROR_EMULATION and assist is not None and assist.at_trampoline(self):
                return True
            if suberror == abi.KVM_INTERNAL_ERROR_EMULATION and machine.emulate is not None:
                problem = machine.emulate(self)
                if problem is None:
                    return True
                self.fatal(f"emulation failure: {problem}")
                return False
            self.fatal(f"internal error, suberror {suberror}")
            return False
        if reason == abi.KVM_EXIT_SHUTDOWN:
            self.fatal("triple fault (KVM_EXIT_SHUTDOWN)")
            return False
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            self.fatal(f"entry failed, hardware reason {self._u64[abi.RUN_FAIL_ENTRY_REASON // 8]:#x}")
            return False
        handler = machine.exit_handlers.get(reason)
        if handler is not None:
            return handler(self)
        self.fatal(f"unhandled exit reason {reason} ({abi.EXIT_REASON_NAMES.get(reason, '?')})")
        return False

    def call_on_vcpu(self, fn: Callable[[], None], timeout: float = 2.0) -> bool:
        """Run ``fn`` on this vCPU's thread between two KVM_RUNs (vCPU ioctls such as KVM_GET_REGS
        wait for KVM_RUN to return; this kicks the vCPU out for just that long). False on timeout."""
        if not self.thread.is_alive() or self.stopped.is_set():
            fn()
            return True
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        self._calls.append(call)
        self.request_immediate_exit()
        self.machine.kick(self)
        return done.wait(timeout)

    def _run_calls(self) -> None:
        calls, self._calls = self._calls, []
        for call in calls:
            call()

    def fatal(self, why: str) -> None:
        from .dump import register_dump  # the dump is cold code; keep it out of this module

        sys.stderr.write(register_dump(self, why))
        self.machine.request_exit(exitcodes.GUEST_FATAL, why)

    def last_exit_reason(self) -> int:
        return self._u32[abi.RUN_EXIT_REASON // 4]

    def msr_exit(self) -> tuple[int, int]:
        """(MSR index, data) of a KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR exit."""
        return self._u32[abi.RUN_MSR_INDEX // 4], self._u64[abi.RUN_MSR_DATA // 8]

    def answer_msr(self, data: int = 0, *, fault: bool = False) -> None:
        """Complete an MSR exit: the value RDMSR returns, or ``fault`` to make the guest take #GP."""
        self._u64[abi.RUN_MSR_DATA // 8] = data & 0xFFFF_FFFF_FFFF_FFFF
        self._u8[abi.RUN_MSR_ERROR] = int(fault)

    def internal_error_data(self) -> list[int]:
        n = min(self._u32[abi.RUN_INTERNAL_NDATA // 4], 16)
        return [self._u64[abi.RUN_INTERNAL_DATA // 8 + i] for i in range(n)]

    # -- coalesced MMIO ----------------------------------------------------------------------
    def drain_coalesced(self) -> int:
        """Replay the coalesced ring, oldest first, as writes on the owning bus."""
        ring32 = self._ring32
        if ring32 is None:
            return 0
        ring = self._ring
        machine = self.machine
        n = 0
        # The ring is per VM (every vCPU maps the same page): one drainer at a time.
        with machine.coalesced_lock:
            first, last = ring32[0], ring32[1]
            while first != last:
                base = 8 + first * 24
                phys = int.from_bytes(ring[base : base + 8], "little")
                length = int.from_bytes(ring[base + 8 : base + 12], "little")
                pio = int.from_bytes(ring[base + 12 : base + 16], "little")
                value = int.from_bytes(ring[base + 16 : base + 16 + min(length, 8)], "little")
                (machine.pio_bus if pio else machine.mmio_bus).replay(phys, length, value)
                first = (first + 1) % abi.KVM_COALESCED_MMIO_MAX
                ring32[0] = first
                n += 1
        return n
