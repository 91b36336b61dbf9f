"""The interface the userspace instruction emulator works against, and what it reports.

The machine implements GuestCpu for one stopped vCPU (KVM_GET_REGS/SREGS, KVM_TRANSLATE +
GuestMemory for linear addresses, KVM_SET_VCPU_EVENTS to inject); tests implement it with dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Register names the emulator asks for: the 16 GPRs ("rax" .. "r15", kvm_regs spelling), "rip",
# "rflags", the segment bases "cs_base", "ds_base", "es_base", "ss_base", "fs_base", "gs_base"
# (the first four are only asked for outside 64-bit mode), "cr0", "cr3", "cr4", "efer", "cpl" (CS.DPL),
# "idt_base" and "idt_limit". set_reg also takes "cr2" (a #PF's address).
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

VECTOR_BP, VECTOR_UD, VECTOR_NP, VECTOR_GP, VECTOR_PF, VECTOR_MF = 3, 6, 11, 13, 14, 16
CR4_PCIDE, CR4_OSXSAVE = 1 << 17, 1 << 18
EFER_LMA = 1 << 10


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

    def inject_interrupt(self, vector: int) -> None:
        """Deliver ``vector`` through the IDT at the current RIP, with no error code, as ``int $vector``
        does once its DPL check passed (KVM_SET_VCPU_EVENTS, interrupt.injected=1)."""
        ...

    def x87_status_word(self) -> int:
        """FSW (kvm_fpu.fsw)."""
        ...

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) of the vCPU's CPUID (KVM_GET_CPUID2); zeros for a leaf it lacks."""
        ...

    def xcr0(self) -> int:
        """XCR0 (KVM_GET_XCRS)."""
        ...

    def read_msr(self, index: int) -> int | None:
        """The MSR's value, or None where the vCPU has no such MSR."""
        ...

    def is_mapped(self, addr: int) -> bool:
        """True when the guest's page tables map linear ``addr`` (MMIO too: no RAM needed behind it)."""
        ...

    def flush_tlb(self) -> None:
        """Drop every cached translation of this vCPU, global ones included."""
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
