"""Wiring broiler.emulate.syscall into a running VM: MSR filter, LSTAR exits, trampoline exits.

Why and how: broiler/emulate/syscall.py and docs/linux.md §7. This file only touches the VM through
the kvm/ layer (KVM_ENABLE_CAP, KVM_X86_SET_MSR_FILTER, KVM_GET/SET_REGS, SREGS, MSRS) and reaches the
vCPU loop only through the VM's ExitTable (core/exits.py): the LSTAR exits are handlers for
X86_RDMSR/X86_WRMSR, the trampoline check is the SYSCALL_TRAMPOLINE stage of the emulation-failure chain.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

from ..core.exits import EmulationStage, ExitContext, ExitTable
from ..core.memory import SYSCALL_TRAMPOLINE_GPA, GuestMemory
from ..errors import GuestMemoryError
from ..kvm import abi
from ..kvm.ioctls import Vm
from ..kvm.segments import flat_segment
from .syscall import (
    CR4_LA57,
    MSR_LSTAR,
    MSR_SFMASK,
    MSR_STAR,
    PAGE,
    TRAMPOLINE_VA,
    TrampolineConflict,
    complete_syscall,
    install_trampoline,
)

MODES = ("auto", "on", "off")
_CANONICAL_LIMIT = 1 << 47


def _canonical(addr: int) -> bool:
    return addr < _CANONICAL_LIMIT or addr >= (1 << 64) - _CANONICAL_LIMIT


class SyscallAssist:
    """Per VM: the guest's real LSTAR per vCPU, and the trampoline mapping."""

    def __init__(self, vm: Vm, memory: GuestMemory, exits: ExitTable, spare_pages: Sequence[int]) -> None:
        self.memory = memory
        self.spare_pages = list(spare_pages)
        self.lstar: dict[int, int] = {}  # vCPU id -> the value the guest wrote
        self.syscalls = 0  # completed at the trampoline (for the stats line)
        self.problem: str | None = None  # set when the mapping could not be made
        self._lock = threading.Lock()  # APs may write LSTAR while another vCPU runs
        self._used = 0
        vm.enable_cap(abi.KVM_CAP_X86_USER_SPACE_MSR, abi.KVM_MSR_EXIT_REASON_FILTER)
        vm.set_msr_filter([(abi.KVM_MSR_FILTER_READ | abi.KVM_MSR_FILTER_WRITE, MSR_LSTAR, 1, b"\x00")])
        exits.register(abi.KVM_EXIT_X86_WRMSR, self._wrmsr)
        exits.register(abi.KVM_EXIT_X86_RDMSR, self._rdmsr)
        exits.add_emulation_handler(EmulationStage.SYSCALL_TRAMPOLINE, self.at_trampoline)

    # -- LSTAR ------------------------------------------------------------------------------
    def _rdmsr(self, thread: ExitContext) -> bool:
        index, _ = thread.msr_exit()
        thread.answer_msr(self.lstar.get(thread.vcpu.id, 0), fault=index != MSR_LSTAR)
        return True

    def _wrmsr(self, thread: ExitContext) -> bool:
        index, value = thread.msr_exit()
        if index != MSR_LSTAR or not _canonical(value):
            thread.answer_msr(fault=True)  # what the CPU does for a non-canonical LSTAR: #GP
            return True
        thread.answer_msr()
        self.lstar[thread.vcpu.id] = value
        if self._map_trampoline(thread):
            thread.vcpu.set_msrs({MSR_LSTAR: TRAMPOLINE_VA})
        else:  # no assist: the guest gets the LSTAR it asked for
            thread.vcpu.set_msrs({MSR_LSTAR: value})
        return True

    def _map_trampoline(self, thread: ExitContext) -> bool:
        sregs = thread.vcpu.get_sregs()
        memory = self.memory
        with self._lock:
            if self.problem is not None:
                return False
            try:
                self._used += install_trampoline(
                    lambda gpa: memory.read_int(gpa, 8),
                    lambda gpa, v: memory.write_int(gpa, 8, v),
                    lambda gpa: memory.fill(gpa, PAGE),
                    int(sregs.cr3),
                    5 if sregs.cr4 & CR4_LA57 else 4,
                    self.spare_pages[self._used :],
                    gpa=SYSCALL_TRAMPOLINE_GPA,
                )
            except (TrampolineConflict, GuestMemoryError) as exc:  # odd guest page tables must not kill us
                self.problem = f"syscall assist off: {exc}"
                print(f"broiler: {self.problem} (user-mode syscalls will fault on this host)", file=sys.stderr)
                return False
        return True

    # -- the trampoline exit ----------------------------------------------------------------
    def at_trampoline(self, thread: ExitContext) -> bool | None:
        """Emulation-failure stage: True when this exit was a ``syscall`` reaching the trampoline
        (and it has been completed); None when it is someone else's business."""
        vcpu = thread.vcpu
        regs = vcpu.get_regs()
        if regs.rip != TRAMPOLINE_VA or vcpu.id not in self.lstar:
            return None
        sregs = vcpu.get_sregs()
        msrs = vcpu.get_msrs([MSR_STAR, MSR_SFMASK])
        entry = complete_syscall(
            cpl=int(sregs.cs.dpl),
            r11=int(regs.r11),
            star=msrs.get(MSR_STAR, 0),
            sfmask=msrs.get(MSR_SFMASK, 0),
            lstar=self.lstar[vcpu.id],
        )
        regs.rip = entry.rip
        if entry.switch_privilege:
            regs.rflags = entry.rflags
            regs.r11 = entry.r11
            sregs.cs = flat_segment(entry.cs_selector, code=True)  # what SYSCALL loads
            sregs.ss = flat_segment(entry.ss_selector, code=False)
            vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
        self.syscalls += 1
        thread.note_emulated("syscall")
        return True
