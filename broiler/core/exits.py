"""What the vCPU loop knows besides the buses: one table of exit handlers, and how to stop the VM.

The vCPU loop (core/vcpu.py) decodes PIO and MMIO exits itself; every other exit reason is looked up
in an ``ExitTable``. The table starts with the VM-lifecycle exits (HLT, SHUTDOWN, SYSTEM_EVENT,
FAIL_ENTRY, INTERNAL_ERROR) and whoever needs another reason registers a handler for it (the syscall
assist takes X86_RDMSR/X86_WRMSR). An emulation failure (INTERNAL_ERROR, suberror EMULATION) goes
through a chain whose order is fixed by ``EmulationStage``, not by who registered first.

Handlers see the exiting vCPU as an ``ExitContext``: its kvm/ ``Vcpu`` (for KVM_GET/SET_REGS), the
exit's fields in kvm_run, and ``fatal``. Anything else a handler needs (guest memory, the VM fd) it
gets from whoever built it, never from the vCPU.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from .. import exitcodes
from ..errors import BroilerError
from ..kvm import abi
from ..kvm.ioctls import Vcpu


class VmControl(Protocol):
    """The narrow view of the VM a vCPU thread has: is it stopping, ask it to stop, say we stopped."""

    @property
    def stopping(self) -> bool: ...

    def request_exit(self, status: int, reason: str) -> None: ...

    def vcpu_stopped(self) -> None: ...


class ExitContext(Protocol):
    """The exiting vCPU, as handlers see it (core/vcpu.py's VcpuThread is one)."""

    vcpu: Vcpu
    emulated: dict[str, int]  # exits completed in userspace, by what was completed (for the stats)

    def note_emulated(self, what: str) -> None: ...

    def last_exit_reason(self) -> int: ...

    def msr_exit(self) -> tuple[int, int]: ...

    def answer_msr(self, data: int = 0, *, fault: bool = False) -> None: ...

    def internal_suberror(self) -> int: ...

    def internal_error_data(self) -> list[int]: ...

    def system_event_type(self) -> int: ...

    def fail_entry_reason(self) -> int: ...

    def fatal(self, why: str) -> None: ...


# True: resume the guest. False: this vCPU stops (a handler that finds the guest dead calls
# ``ctx.fatal(why)`` first, so the status and the register dump are set).
ExitHandler = Callable[[ExitContext], bool]
# The same, plus None: "not mine", the next stage of the emulation-failure chain is asked.
EmulationHandler = Callable[[ExitContext], bool | None]


class EmulationStage(enum.IntEnum):
    """Who looks at an emulation failure, lowest first. The trampoline check is cheap and exact (one
    RIP compare), so it runs before the instruction completer, which decodes whatever is at RIP."""

    SYSCALL_TRAMPOLINE = 10  # a user-mode syscall reached broiler's trampoline (emulate/syscall_assist.py)
    INSTRUCTION_COMPLETER = 20  # an instruction KVM's emulator lacks (emulate/kvm_cpu.py)


class ExitTable:
    """Exit reason -> handler, for every exit that is not PIO or MMIO; one per VM, shared by its vCPUs.

    ``handlers`` is read by the vCPU loop on each such exit and changed in place, so a handler
    registered while the VM runs is seen at once."""

    def __init__(self, control: VmControl) -> None:
        self.control = control
        self.handlers: dict[int, ExitHandler] = {
            abi.KVM_EXIT_HLT: _stop_this_vcpu,
            abi.KVM_EXIT_SHUTDOWN: _triple_fault,
            abi.KVM_EXIT_FAIL_ENTRY: _entry_failed,
            abi.KVM_EXIT_SYSTEM_EVENT: self._system_event,
            abi.KVM_EXIT_INTERNAL_ERROR: self._internal_error,
        }
        self._builtin = frozenset(self.handlers)
        self._emulation: list[tuple[EmulationStage, EmulationHandler]] = []

    def register(self, reason: int, handler: ExitHandler) -> None:
        """Handle exit ``reason`` with ``handler``; a reason has one owner (a second one is a bug)."""
        if reason in self.handlers:
            what = "built in" if reason in self._builtin else "already registered"
            raise BroilerError(f"exit reason {abi.EXIT_REASON_NAMES.get(reason, reason)} is {what}")
        self.handlers[reason] = handler

    def add_emulation_handler(self, stage: EmulationStage, handler: EmulationHandler) -> None:
        """Put ``handler`` into the emulation-failure chain at ``stage`` (one handler per stage)."""
        if any(s == stage for s, _ in self._emulation):
            raise BroilerError(f"emulation stage {stage.name} already has a handler")
        self._emulation.append((stage, handler))
        self._emulation.sort(key=lambda entry: entry[0])

    def emulation_stages(self) -> list[EmulationStage]:
        return [stage for stage, _ in self._emulation]

    # -- the built-in lifecycle exits ------------------------------------------------------------
    def _system_event(self, ctx: ExitContext) -> bool:
        kind = ctx.system_event_type()
        if kind in (abi.KVM_SYSTEM_EVENT_SHUTDOWN, abi.KVM_SYSTEM_EVENT_RESET):
            why = "guest shutdown" if kind == abi.KVM_SYSTEM_EVENT_SHUTDOWN else "guest reset"
            self.control.request_exit(exitcodes.OK, why)
            return False
        ctx.fatal(f"system event {kind} (crash)")
        return False

    def _internal_error(self, ctx: ExitContext) -> bool:
        suberror = ctx.internal_suberror()
        if suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            for _stage, handler in self._emulation:
                verdict = handler(ctx)
                if verdict is not None:
                    return verdict
        ctx.fatal(f"internal error, suberror {suberror}")
        return False


def _stop_this_vcpu(ctx: ExitContext) -> bool:
    """HLT reaches userspace only without the in-kernel irqchip: nothing will wake this vCPU."""
    return False


def _triple_fault(ctx: ExitContext) -> bool:
    ctx.fatal("triple fault (KVM_EXIT_SHUTDOWN)")
    return False


def _entry_failed(ctx: ExitContext) -> bool:
    ctx.fatal(f"entry failed, hardware reason {ctx.fail_entry_reason():#x}")
    return False
