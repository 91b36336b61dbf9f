"""The interface the userspace instruction emulator works against, and what it reports.

The machine implements GuestCpu for one stopped vCPU (KVM_GET_REGS/SREGS, KVM_TRANSLATE +
GuestMemory for linear addresses, KVM_SET_VCPU_EVENTS to inject); tests implement it with dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Register names the emulator asks for: the 16 GPRs ("rax" .. "r15", kvm_regs spelling), "rip",
# "rflags", the segment bases "cs_base", "ds_base", "es_base", "ss_base", "fs_base", "gs_base"
# (the first four are only asked for outside 64-bit mode), and "cr0".
GPR_NAMES = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)

RFLAGS_CF, RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF, RFLAGS_SF = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7
RFLAGS_OF, RFLAGS_AC = 1 << 11, 1 << 18
FSW_ES = 1 << 7  # x87 status word: an unmasked exception is pending

VECTOR_BP, VECTOR_UD, VECTOR_GP, VECTOR_MF = 3, 6, 13, 16


class GuestFault(Exception):
    """A linear address the guest's page tables do not map (or not for this access)."""

    def __init__(self, addr: int, write: bool) -> None:
        super().__init__(f"{'write to' if write else 'read from'} unmapped linear address {addr:#x}")
        self.addr = addr
        self.write = write


class GuestCpu(Protocol):
    def bitness(self) -> int:
        """16, 32 or 64: the code size of the current instruction (CS.L, CS.D/B, CR0.PE)."""
        ...

    def get_reg(self, name: str) -> int: ...

    def set_reg(self, name: str, value: int) -> None: ...

    def read_linear(self, addr: int, size: int) -> bytes:
        """Guest-linear read; raises GuestFault if any byte is unmapped."""
        ...

    def write_linear(self, addr: int, data: bytes) -> None:
        """Guest-linear write; raises GuestFault if any byte is unmapped or read-only."""
        ...

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Queue an exception for the next KVM_RUN (KVM_SET_VCPU_EVENTS, exception.injected=1)."""
        ...

    def x87_status_word(self) -> int:
        """FSW (kvm_fpu.fsw)."""
        ...


@dataclass(frozen=True, slots=True)
class EmulationResult:
    """``handled``: resume the vCPU. Otherwise ``str(result)`` ("unsupported: ...") goes into the
    register dump and the VM stops."""

    handled: bool
    instruction: str  # the decoded instruction, Intel syntax, or the raw bytes
    action: str  # what was done ("emulated", "injected #BP", ...) or why not

    def __str__(self) -> str:
        if self.handled:
            return f"{self.instruction}: {self.action}"
        return f"unsupported: {self.instruction} ({self.action})"
