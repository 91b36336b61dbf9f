"""Ask this host's KVM how it runs two instructions Linux depends on, with a throw-away VM.

Some KVMs do not run every guest instruction the way hardware does (KVM-PVM, docs/linux.md §7-8), and
the same host kernel may change between releases, so broiler measures instead of guessing from module
names. The probe VM has 64 KiB of RAM, one 2 MiB identity page (user-accessible) and two vCPUs:

- vCPU 0 starts at CPL3 in 64-bit mode on a ``syscall``. LSTAR points at user-accessible code that
  stores CS to an address with no memory (an MMIO exit). Hardware enters LSTAR at CPL0 with STAR's
  kernel CS; KVM-PVM (for a non-PVM guest) was measured to jump there still at CPL3.
- vCPU 1 starts at CPL0 and writes a non-canonical value to LSTAR. Hardware raises #GP (no IDT here:
  the VM shuts down); a KVM that accepts it goes on to the MMIO store, and LSTAR holds the bad value.
- vCPU 2 starts at CPL0 on a ``popcnt``, an instruction KVM's instruction emulator does not have, then
  stores to an address with no memory. Under VMX/SVM the CPU runs it and the store is an MMIO exit; a
  KVM that runs CPL0 code in its emulator (KVM-PVM) ends KVM_RUN with an emulation failure instead.
  That is what ``--emulate-missing auto`` asks: will a guest's CPL0 code meet instructions only broiler
  can complete? (popcnt, because every x86-64 CPU KVM runs on has it and it cannot fault here.)

The whole probe takes a few milliseconds (``broiler host`` prints it). It never runs guest code that
could loop: every path ends in an MMIO exit, a shutdown or an emulation failure, and a watchdog gives
up after a second anyway.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from ..errors import KvmError
from ..x86 import (
    CR0_AM,
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_SCE,
    MSR_LSTAR,
    MSR_SFMASK,
    MSR_STAR,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    RFLAGS_RESET,
)
from . import abi
from .ioctls import Kvm, Vcpu
from .segments import flat_segment

RAM_SIZE = 0x10000
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
USER_CODE, LSTAR_CODE, WRMSR_CODE, STACK = 0x4000, 0x5000, 0x6000, 0x8000
POPCNT_CODE = 0x7000
REPORT_SYSCALL, REPORT_WRMSR, REPORT_POPCNT = 0x100000, 0x100008, 0x100010  # no memory: a store is MMIO
KERNEL_CS, USER_CS = 0x08, 0x2B
NON_CANONICAL = 0x0000_8000_0000_0000
_PTE = PTE_P | PTE_RW | PTE_US
_PS = PTE_PS
_T = TypeVar("_T")

# 0f 05: syscall; 0f 0b: ud2 (never reached on a sane host; with no IDT it shuts the VM down)
_USER = bytes.fromhex("0f05 0f0b")
# 8c c8: mov %cs,%eax; 89 04 25 <imm32>: mov %eax,REPORT_SYSCALL; 0f 0b: ud2
_AT_LSTAR = bytes.fromhex("8cc8 890425") + struct.pack("<I", REPORT_SYSCALL) + bytes.fromhex("0f0b")
# mov $MSR_LSTAR,%ecx; xor %eax,%eax; mov $0x8000,%edx; wrmsr; mov %eax,REPORT_WRMSR; ud2
_WRMSR = (
    b"\xb9"
    + struct.pack("<I", MSR_LSTAR)
    + bytes.fromhex("31c0 ba00800000 0f30 890425")
    + struct.pack("<I", REPORT_WRMSR)
    + bytes.fromhex("0f0b")
)

# popcnt %eax,%eax; mov %eax,REPORT_POPCNT; ud2
_POPCNT = bytes.fromhex("f30fb8c0 890425") + struct.pack("<I", REPORT_POPCNT) + bytes.fromhex("0f0b")


@dataclass(frozen=True)
class HostBehaviour:
    """What the probe saw. ``syscall_cpl``: the CPL a user-mode ``syscall`` arrived at LSTAR with
    (0 as on hardware, 3 on KVM-PVM, None if it never got there); ``noncanonical_lstar``: "#GP" or
    "accepted" (or "unknown"); ``cpl0_popcnt``: "ran" (VMX/SVM) or "emulation failure" (KVM's emulator
    runs CPL0 code) or "unknown"; ``detail``: one line per vCPU of what ended its run."""

    release: str
    syscall_cpl: int | None
    noncanonical_lstar: str
    detail: str
    seconds: float
    cpl0_popcnt: str = "unknown"

    @property
    def instruction_emulating(self) -> bool:
        return self.cpl0_popcnt == "emulation failure"

    def emulation_reason(self) -> str:
        if self.cpl0_popcnt == "emulation failure":
            return f"a CPL0 popcnt ended KVM_RUN with an emulation failure on {self.release}"
        if self.cpl0_popcnt == "ran":
            return f"a CPL0 popcnt ran (as on hardware) on {self.release}"
        return f"the CPL0 probe gave no answer on {self.release} ({self.detail})"

    @property
    def needs_syscall_assist(self) -> bool:
        return self.syscall_cpl == 3

    def assist_reason(self) -> str:
        if self.syscall_cpl == 3:
            return f"a user-mode syscall reached LSTAR still at CPL3 on {self.release}"
        if self.syscall_cpl == 0:
            return f"a user-mode syscall reached LSTAR at CPL0 (as on hardware) on {self.release}"
        return f"the syscall probe did not reach LSTAR on {self.release} ({self.detail})"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "needs_syscall_assist": self.needs_syscall_assist,
            "instruction_emulating": self.instruction_emulating,
        }


def _long_mode(vcpu: Vcpu, *, rip: int, cpl: int) -> None:
    sregs = vcpu.get_sregs()
    sregs.cs = flat_segment(USER_CS if cpl else KERNEL_CS, code=True, dpl=cpl)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat_segment(0x23 if cpl else 0x10, code=False, dpl=cpl)
    sregs.cr0 = CR0_PG | CR0_AM | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE
    sregs.cr3, sregs.cr4 = PML4, CR4_PAE
    sregs.efer = EFER_LMA | EFER_LME | EFER_SCE
    vcpu.set_sregs(sregs)
    regs = abi.kvm_regs()
    regs.rip, regs.rsp, regs.rflags = rip, STACK - 0x100 * (1 + vcpu.id), RFLAGS_RESET
    vcpu.set_regs(regs)
    vcpu.set_msrs({MSR_STAR: (0x1B << 48) | (KERNEL_CS << 32), MSR_LSTAR: LSTAR_CODE, MSR_SFMASK: 0x47700})


def _run(vcpu: Vcpu) -> tuple[int, int]:
    """KVM_RUN until something other than an interrupted run; (exit reason, MMIO address or 0)."""
    page = vcpu.run_page
    while True:
        try:
            vcpu.run()
        except KvmError as exc:
            if exc.errno == 4:  # EINTR: the watchdog kicked us
                return -1, 0
            raise
        reason = struct.unpack_from("<I", page, abi.RUN_EXIT_REASON)[0]
        if reason != abi.KVM_EXIT_INTR:
            addr = struct.unpack_from("<Q", page, abi.RUN_MMIO_PHYS_ADDR)[0] if reason == abi.KVM_EXIT_MMIO else 0
            return reason, addr


def _describe(reason: int, addr: int) -> str:
    if reason == -1:
        return "no exit within 1 s"
    name = {
        abi.KVM_EXIT_MMIO: "MMIO",
        abi.KVM_EXIT_SHUTDOWN: "shutdown",
        abi.KVM_EXIT_INTERNAL_ERROR: "emulation failure",
        abi.KVM_EXIT_FAIL_ENTRY: "entry failure",
    }
    return f"{name.get(reason, f'exit {reason}')}" + (f" at {addr:#x}" if reason == abi.KVM_EXIT_MMIO else "")


def _syscall_probe(vcpu: Vcpu) -> tuple[int | None, str]:
    reason, addr = _run(vcpu)
    if reason == abi.KVM_EXIT_MMIO and addr == REPORT_SYSCALL:
        sregs = vcpu.get_sregs()
        cs_seen = struct.unpack_from("<H", vcpu.run_page, abi.RUN_MMIO_DATA)[0]
        return int(sregs.cs.dpl), f"syscall: at LSTAR with CS {cs_seen:#x}, CPL {sregs.cs.dpl}"
    return None, f"syscall: {_describe(reason, addr)}"


def _wrmsr_probe(vcpu: Vcpu) -> tuple[str, str]:
    reason, addr = _run(vcpu)
    lstar = vcpu.get_msrs([MSR_LSTAR]).get(MSR_LSTAR, 0)
    if reason == abi.KVM_EXIT_MMIO and addr == REPORT_WRMSR:
        verdict = "accepted" if lstar == NON_CANONICAL else "ignored"
    elif reason == abi.KVM_EXIT_SHUTDOWN and lstar == LSTAR_CODE:
        verdict = "#GP"  # the only fault here; with no IDT it becomes a triple fault
    else:
        verdict = "unknown"
    return verdict, f"wrmsr: {_describe(reason, addr)}, LSTAR then {lstar:#x}"


def _cpl0_probe(vcpu: Vcpu) -> tuple[str, str]:
    reason, addr = _run(vcpu)
    if reason == abi.KVM_EXIT_MMIO and addr == REPORT_POPCNT:
        return "ran", "popcnt: ran, then MMIO"
    if reason == abi.KVM_EXIT_INTERNAL_ERROR:
        return "emulation failure", "popcnt: emulation failure"
    return "unknown", f"popcnt: {_describe(reason, addr)}"


def _in_thread(fn: Callable[[Vcpu], _T], vcpu: Vcpu, default: _T) -> _T:
    """Run one probe with a watchdog: after a second, ask KVM_RUN to stop (immediate_exit, then a
    signal that interrupts the ioctl: SIGUSR1 where broiler's no-op handler is installed)."""
    result = [default]
    worker = threading.Thread(target=lambda: result.__setitem__(0, fn(vcpu)), daemon=True)
    worker.start()
    worker.join(1.0)
    kick = signal.SIGUSR1 if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None) else signal.SIGCONT
    for _ in range(10):  # then give up: the daemon thread cannot keep the process alive
        if not worker.is_alive() or worker.ident is None:
            break
        vcpu.run_page[abi.RUN_IMMEDIATE_EXIT] = 1
        try:
            signal.pthread_kill(worker.ident, kick)
        except (ProcessLookupError, ValueError):
            break
        worker.join(0.1)
    return result[0]


def probe_host(kvm: Kvm | None = None) -> HostBehaviour:
    """Run the probe VM once (raises KvmUnavailable where there is no usable /dev/kvm)."""
    start = time.perf_counter()
    own = kvm is None
    kvm = kvm or Kvm()
    vm = kvm.create_vm()
    ram = mmap.mmap(-1, RAM_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    vcpus: list[Vcpu] = []
    try:
        struct.pack_into("<Q", ram, PML4, PDPT | _PTE)
        struct.pack_into("<Q", ram, PDPT, PD | _PTE)
        struct.pack_into("<Q", ram, PD, _PTE | _PS)
        for addr, code in (
            (USER_CODE, _USER),
            (LSTAR_CODE, _AT_LSTAR),
            (WRMSR_CODE, _WRMSR),
            (POPCNT_CODE, _POPCNT),
        ):
            ram[addr : addr + len(code)] = code
        vm.set_tss_addr(0xFFFBD000)  # Intel VMX wants one; harmless elsewhere
        host_addr = _address_of(ram)
        vm.set_user_memory_region(0, 0, RAM_SIZE, host_addr)
        vcpus = [vm.create_vcpu(0), vm.create_vcpu(1), vm.create_vcpu(2)]
        _long_mode(vcpus[0], rip=USER_CODE, cpl=3)
        _long_mode(vcpus[1], rip=WRMSR_CODE, cpl=0)
        _long_mode(vcpus[2], rip=POPCNT_CODE, cpl=0)
        no_answer: tuple[int | None, str] = (None, "syscall: no exit within 1 s")
        cpl, syscall_line = _in_thread(_syscall_probe, vcpus[0], no_answer)
        verdict, wrmsr_line = _in_thread(_wrmsr_probe, vcpus[1], ("unknown", "wrmsr: no exit within 1 s"))
        popcnt, popcnt_line = _in_thread(_cpl0_probe, vcpus[2], ("unknown", "popcnt: no exit within 1 s"))
    finally:
        for vcpu in vcpus:
            vcpu.close()
        vm.close()
        if own:
            kvm.close()
    return HostBehaviour(
        release=platform.release(),
        syscall_cpl=cpl,
        noncanonical_lstar=verdict,
        detail=f"{syscall_line}; {wrmsr_line}; {popcnt_line}",
        seconds=time.perf_counter() - start,
        cpl0_popcnt=popcnt,
    )


def _address_of(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


_cache: dict[str, HostBehaviour] = {}
_cache_lock = threading.Lock()


def host_behaviour() -> HostBehaviour:
    """The probe's answer for this process (the host kernel cannot change under a running process)."""
    with _cache_lock:
        key = f"{platform.release()}:{os.getpid()}"
        if key not in _cache:
            _cache[key] = probe_host()
        return _cache[key]
