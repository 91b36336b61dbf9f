"""The vCPU thread: KVM_RUN, decode the exit from the shared kvm_run page, dispatch it.

This is broiler's hot path. It reads ``kvm_run`` through memoryviews cast to u8/u16/u32/u64 that
are created once per vCPU, at indices derived once from the ``abi.RUN_*`` offsets, looks devices up
in the bus's per-address cache (a dict hit after the first access), and neither allocates nor logs
per exit unless tracing is on. KVM_RUN goes through ``fcntl.ioctl``, which releases the GIL while the
guest runs. KVM_RUN is issued as ``ioctl(fd, KVM_RUN)``, never ``ioctl(fd, KVM_RUN, 0)``: given an
argument, fcntl.ioctl first tries it as a writable and then a read-only buffer, and each failed try
raises and clears a TypeError (~1.1 µs per exit, measured with the bench's former breakdown ladder);
left out, the argument is 0 with no parsing at all.

What a vCPU thread is given, and all it knows: the two buses, the VM's ``ExitTable``
(core/exits.py), the ``CoalescedRing`` (core/coalesced.py), a ``VmControl`` (is the VM stopping,
ask it to stop, say this vCPU stopped) and, for the register dump only, guest memory.

Exit handling:

=====================  ====================================================================
IO                     port bus; string IO (count > 1) walks the data page ``size`` bytes at a time
MMIO                   MMIO bus; the coalesced ring is drained first
INTR (EINTR)           a kick: run queued calls (``call_on_vcpu``); park if paused; the loop checks
                       ``stopping``
any other reason       the ``ExitTable`` handler for it; none registered: fatal, register dump
=====================  ====================================================================

The ``ExitTable`` starts with these; others register theirs (the syscall assist: X86_RDMSR/WRMSR):

=====================  ====================================================================
HLT                    this vCPU stops (only seen without the in-kernel irqchip)
SHUTDOWN               triple fault: fatal, register dump
SYSTEM_EVENT           shutdown/reset end the VM with status 0; crash is fatal
FAIL_ENTRY             fatal, register dump
INTERNAL_ERROR         emulation failures go through the chain in ``EmulationStage`` order: the
                       syscall trampoline, then the instruction completer; unclaimed: fatal
=====================  ====================================================================

The compiled fast path: where ``broiler/core/_fastexit.c`` was built (setup.py builds it whenever a C
compiler and Python's headers are there; the build is optional), the loop hands KVM_RUN and the
decode of single PIO and 1/2/4/8-byte MMIO exits to C, which calls the same ``Region.read/write`` the
Python loop calls: stats, tracing and the bus rules are identical. Every other exit returns to
``_dispatch`` here. ``BROILER_PURE_PYTHON=1`` forces the Python loop (the fallback everywhere else);
``broiler bench`` measures both.

Pause (``broiler pause``): ``pause()`` asks for an immediate exit and kicks; the thread, back from
KVM_RUN with EINTR, parks on an Event between two KVM_RUNs (no CPU used, no busy wait) until
``resume()``, a stop, or a ``call_on_vcpu`` (which runs on the parked thread: ``broiler regs`` works on
a paused VM). The exit path pays nothing for it: the check sits on the EINTR branch only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from .. import exitcodes
from ..errors import ConfigError
from ..kvm import abi
from ..kvm.abi import buffer_address
from ..kvm.ioctls import Vcpu
from .bus import MmioBus, PioBus
from .coalesced import CoalescedRing
from .dump import register_dump
from .exits import ExitTable, VmControl
from .memory import GuestMemory

try:  # the optional compiled exit loop (setup.py builds it where a C compiler is available)
    from . import _fastexit  # type: ignore[attr-defined, unused-ignore]
except ImportError:  # pragma: no cover - depends on the build
    _fastexit = None

_EXIT_IO = abi.KVM_EXIT_IO
_EXIT_MMIO = abi.KVM_EXIT_MMIO
_KVM_RUN = abi.KVM_RUN
KICK_SIGNAL = signal.SIGUSR1
PAGE_SIZE = 4096
EMULATED_KINDS = 256  # distinct keys of VcpuThread.emulated; the rest share OTHER_EMULATED
OTHER_EMULATED = "(other instructions)"
_NO_VIEW = memoryview(b"")  # stands in for the item widths KVM never reports (3, 5, 6, 7)


def _index(offset: int, width: int) -> int:
    """The index of kvm_run field ``offset`` in the view of ``width``-byte items."""
    if offset % width:
        raise ValueError(f"kvm_run offset {offset} is not {width}-byte aligned")
    return offset // width


# kvm_run fields as indices into the u8/u16/u32/u64 views (computed once; the exit path reads them).
_EXIT_REASON = _index(abi.RUN_EXIT_REASON, 4)
_IO_DIRECTION = abi.RUN_IO_DIRECTION
_IO_SIZE = abi.RUN_IO_SIZE
_IO_PORT = _index(abi.RUN_IO_PORT, 2)
_IO_COUNT = _index(abi.RUN_IO_COUNT, 4)
_IO_DATA_OFFSET = _index(abi.RUN_IO_DATA_OFFSET, 8)
_MMIO_PHYS_ADDR = _index(abi.RUN_MMIO_PHYS_ADDR, 8)
_MMIO_LEN = _index(abi.RUN_MMIO_LEN, 4)
_MMIO_IS_WRITE = abi.RUN_MMIO_IS_WRITE
_MMIO_DATA = abi.RUN_MMIO_DATA  # a byte offset: divided by the access size, it indexes that view
_MMIO_DATA_END = abi.RUN_MMIO_DATA + 8


def _ignore_kick(signum: int, frame: object) -> None:
    return None


def install_kick_handler() -> None:
    """KICK_SIGNAL interrupts KVM_RUN in a vCPU thread (``VcpuThread.kick``). Its handler does nothing
    and stays installed for the life of the process, so a late kick can never kill it."""
    if signal.getsignal(KICK_SIGNAL) is not _ignore_kick:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError("create the first Machine on the main thread (it installs a signal handler)")
        signal.signal(KICK_SIGNAL, _ignore_kick)


class VcpuThread:
    """Runs one vCPU until the VM stops; counts exits by reason."""

    def __init__(
        self,
        vcpu: Vcpu,
        *,
        pio_bus: PioBus,
        mmio_bus: MmioBus,
        exits: ExitTable,
        coalesced: CoalescedRing,
        control: VmControl,
        memory: GuestMemory | None = None,
    ) -> None:
        self.vcpu = vcpu
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.control = control
        self.coalesced = coalesced
        self.memory = memory  # read by the register dump only (code at RIP, top of the stack)
        self._handlers = exits.handlers  # shared and changed in place: see ExitTable
        self.exit_counts = [0] * 64
        self.thread = threading.Thread(target=self._thread_main, name=f"broiler-vcpu{vcpu.id}", daemon=True)
        page = memoryview(vcpu.run_page)
        self._u8 = page.cast("B")
        self._u16 = page.cast("H")
        self._u32 = page.cast("I")
        self._u64 = page.cast("Q")
        nil = _NO_VIEW
        self._views = (nil, self._u8, self._u16, nil, self._u32, nil, nil, nil, self._u64)
        self.compiled = _fastexit is not None and os.environ.get("BROILER_PURE_PYTHON") != "1"
        ring_off = vcpu.coalesced_page * PAGE_SIZE
        self._ring = page[ring_off : ring_off + PAGE_SIZE] if vcpu.coalesced_page > 0 else None
        self._ring32 = self._ring.cast("I") if self._ring is not None else None
        self._ring_addr = buffer_address(vcpu.run_page) + ring_off if self._ring is not None else 0
        self.stopped = threading.Event()
        self._calls: list[Callable[[], None]] = []  # run on this thread at the next kick
        self._pause_requested = False
        self._wake = threading.Event()  # set by kick(): a parked thread looks at its state again
        self.parked = threading.Event()  # set while the thread sits between KVM_RUNs, paused
        self.emulated: dict[str, int] = {}  # exits completed in userspace by handlers, by what (bounded)

    def note_emulated(self, what: str) -> None:
        """Count one exit completed in userspace under ``what`` (an instruction's text, "syscall"). The text
        carries operands, so a guest could make endless distinct keys: past EMULATED_KINDS of them the
        rest are counted under OTHER_EMULATED."""
        counts = self.emulated
        if what not in counts and len(counts) >= EMULATED_KINDS:
            what = OTHER_EMULATED
        counts[what] = counts.get(what, 0) + 1

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_immediate_exit(self) -> None:
        """Make the next (or current, after a signal) KVM_RUN return at once."""
        self._u8[abi.RUN_IMMEDIATE_EXIT] = 1

    def kick(self) -> None:
        """Interrupt KVM_RUN on this vCPU's thread (KICK_SIGNAL; its Python handler does nothing)."""
        self._wake.set()  # a parked thread is not in KVM_RUN: the signal alone would not reach it
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive() and ident != threading.get_ident():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def pause(self) -> None:
        """Get this vCPU out of KVM_RUN and parked (returns at once: wait on ``parked`` or ``stopped``)."""
        self._pause_requested = True
        self.request_immediate_exit()
        self.kick()

    def resume(self) -> None:
        self._pause_requested = False
        self._wake.set()

    def _park(self) -> None:
        """Wait, without KVM_RUN, until resumed or stopped; run queued calls meanwhile."""
        self.parked.set()
        try:
            while self._pause_requested and not self.control.stopping:
                self._wake.wait()
                self._wake.clear()  # state is re-read after the clear, so a set in between is not lost
                if self._calls:
                    self._run_calls()
        finally:
            self.parked.clear()

    # -- the loop ----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self._loop()
        except Exception:
            sys.stderr.write(f"broiler: internal error on vCPU {self.vcpu.id}:\n{traceback.format_exc()}")
            self.control.request_exit(exitcodes.INTERNAL, "internal error")
        finally:
            self.drain_coalesced()
            self.stopped.set()
            self.control.vcpu_stopped()

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
        if self._pause_requested:
            self._park()

    def _loop_python(self) -> None:
        control = self.control
        ioctl = fcntl.ioctl
        fd = self.vcpu.fd
        ring32 = self._ring32
        zones = self.coalesced.zones  # appended to in place: a zone added later is seen at once
        drain = self.drain_coalesced
        dispatch = self._dispatch
        while not control.stopping:
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
        control = self.control
        run = _fastexit.run  # type: ignore[union-attr]
        run_addr = buffer_address(self.vcpu.run_page)
        zones = self.coalesced.zones
        args = (
            self.vcpu.fd,
            run_addr,
            self._ring_addr,
            zones,
            self.pio_bus,
            self.mmio_bus,
            self.exit_counts,
            self.drain_coalesced,
        )
        ring32 = self._ring32
        while not control.stopping:
            rc = run(*args)
            if rc < 0:
                if -rc in (errno.EINTR, errno.EAGAIN):
                    self._kicked()
                    continue
                raise OSError(-rc, os.strerror(-rc))
            if zones and ring32 is not None and ring32[0] != ring32[1]:
                self.drain_coalesced()
            if not self._dispatch():
                return

    def _dispatch(self) -> bool:
        """Handle the exit in the kvm_run page; False when this vCPU must stop."""
        u8, u32, u64 = self._u8, self._u32, self._u64
        reason = u32[_EXIT_REASON]
        self.exit_counts[reason] += 1
        if reason == _EXIT_IO:
            port = self._u16[_IO_PORT]
            size = u8[_IO_SIZE]
            count = u32[_IO_COUNT]
            view = self._views[size]
            index = u64[_IO_DATA_OFFSET] // size
            pio = self.pio_bus
            target = pio.cache.get(port) or pio.resolve(port)
            if u8[_IO_DIRECTION]:
                for i in range(index, index + count):  # count > 1: string IO (rep outs/ins)
                    target.write(port, size, view[i])
            else:
                for i in range(index, index + count):
                    view[i] = target.read(port, size)
            return True
        if reason == _EXIT_MMIO:
            addr = u64[_MMIO_PHYS_ADDR]
            size = u32[_MMIO_LEN]
            mmio = self.mmio_bus
            target = mmio.cache.get(addr) or mmio.resolve(addr)
            if size in (1, 2, 4, 8):
                view = self._views[size]
                if u8[_MMIO_IS_WRITE]:
                    target.write(addr, size, view[_MMIO_DATA // size])
                else:
                    view[_MMIO_DATA // size] = target.read(addr, size)
            elif 0 < size <= 8:  # a fragment of a page-crossing access
                if u8[_MMIO_IS_WRITE]:
                    target.write(addr, size, int.from_bytes(u8[_MMIO_DATA : _MMIO_DATA + size], "little"))
                else:
                    u8[_MMIO_DATA : _MMIO_DATA + size] = target.read(addr, size).to_bytes(size, "little")
            return True
        return self._other_exit(reason)

    def _other_exit(self, reason: int) -> bool:
        """Every exit that is not PIO or MMIO goes to the ExitTable; False when this vCPU must stop."""
        handler = self._handlers.get(reason)
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
        self.kick()
        return done.wait(timeout)

    def _run_calls(self) -> None:
        calls, self._calls = self._calls, []
        for call in calls:
            call()

    def fatal(self, why: str) -> None:
        """The guest cannot go on: print the register dump and end the VM with GUEST_FATAL."""
        sys.stderr.write(register_dump(self, why, memory=self.memory))
        self.control.request_exit(exitcodes.GUEST_FATAL, why)

    # -- the exit's fields, for handlers (core/exits.py ExitContext) --------------------------
    def last_exit_reason(self) -> int:
        return self._u32[_EXIT_REASON]

    def msr_exit(self) -> tuple[int, int]:
        """(MSR index, data) of a KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR exit."""
        return self._u32[_index(abi.RUN_MSR_INDEX, 4)], self._u64[_index(abi.RUN_MSR_DATA, 8)]

    def answer_msr(self, data: int = 0, *, fault: bool = False) -> None:
        """Complete an MSR exit: the value RDMSR returns, or ``fault`` to make the guest take #GP."""
        self._u64[_index(abi.RUN_MSR_DATA, 8)] = data & 0xFFFF_FFFF_FFFF_FFFF
        self._u8[abi.RUN_MSR_ERROR] = int(fault)

    def internal_suberror(self) -> int:
        return self._u32[_index(abi.RUN_INTERNAL_SUBERROR, 4)]

    def internal_error_data(self) -> list[int]:
        n = min(self._u32[_index(abi.RUN_INTERNAL_NDATA, 4)], 16)
        first = _index(abi.RUN_INTERNAL_DATA, 8)
        return [self._u64[first + i] for i in range(n)]

    def system_event_type(self) -> int:
        return self._u32[_index(abi.RUN_SYSTEM_EVENT_TYPE, 4)]

    def fail_entry_reason(self) -> int:
        return self._u64[_index(abi.RUN_FAIL_ENTRY_REASON, 8)]

    # -- coalesced MMIO ----------------------------------------------------------------------
    def drain_coalesced(self) -> int:
        """Replay the coalesced ring, oldest first, as writes on the owning bus."""
        if self._ring is None or self._ring32 is None:
            return 0
        if self.compiled:
            return self.coalesced.drain_compiled(self._ring_addr, _fastexit.drain)  # type: ignore[union-attr]
        return self.coalesced.drain(self._ring, self._ring32)
