"""Booting Linux on a Machine: the glue between broiler/linux (tables, loaders, CPU profiles, all
KVM-free) and the running VM (vCPU registers, CPUID, the userspace instruction emulator).

See docs/linux.md for the boot flow and what this host's KVM-PVM allows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import BroilerError, GuestMemoryError
from ..inputs import read_input
from ..kvm import abi
from ..kvm.hostprobe import host_behaviour
from ..linux import layout
from ..linux.boot import LinuxBoot, prepare_linux_boot
from ..linux.cpuid import CpuidEntry, apply_profile, profile_cmdline
from ..linux.entry import EntryState, SegmentState
from ..linux.firmware import PciIrq
from ..platform import firmware_declared_ports

if TYPE_CHECKING:
    from ..kvm.ioctls import Vcpu
    from ..machine import Machine
    from ..vcpu import VcpuThread

DEFAULT_CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr loglevel=8 nowatchdog " \
                  "cryptomgr.notests pci=conf1 reboot=k panic=-1"


# On instruction-emulating hosts these initcalls took over 550 s of a ~770 s boot (../shared/host-kvm.md)
# and a test guest needs none of them; the `safe` profile skips them. The last two were measured with
# broiler (initcall_debug, Debian 6.1 cloud kernel, 4 GiB): tracer_init_tracefs 170 s, dev_map_init 68 s.
SAFE_INITCALL_BLACKLIST = "initcall_blacklist=init_kprobe_trace,trace_eval_init,crypto_kdf108_init," \
                          "slab_sysfs_init,blake2s_mod_init,tracer_init_tracefs,dev_map_init"


def default_profile() -> str:
    """``safe`` on hosts whose KVM runs CPL0 guest code in its instruction emulator (KVM-PVM), else ``host``."""
    return "safe" if host_is_pvm() else "host"


def _to_plain(e: abi.kvm_cpuid_entry2) -> CpuidEntry:
    return CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


def set_cpuid_profile(machine: Machine, profile: str) -> None:
    supported = [_to_plain(e) for e in machine.kvm.supported_cpuid()]
    n = len(machine.vcpus)
    for vcpu in machine.vcpus:
        entries = [abi.kvm_cpuid_entry2(function=e.function, index=e.index, flags=e.flags, eax=e.eax, ebx=e.ebx,
                                        ecx=e.ecx, edx=e.edx)
                   for e in apply_profile(profile, supported, vcpu.id, n)]
        vcpu.set_cpuid(entries)


def _segment(s: SegmentState) -> abi.kvm_segment:
    return abi.kvm_segment(base=s.base, limit=s.limit, selector=s.selector, type=s.type, present=s.present,
                           dpl=s.dpl, db=s.db, s=s.s, l=s.l, g=s.g, avl=s.avl, unusable=s.unusable)


def apply_entry(vcpu: Vcpu, entry: EntryState) -> None:
    from ..machine import Machine

    Machine.enter(vcpu, rip=entry.rip, regs=entry.regs, cs=_segment(entry.cs), data=_segment(entry.data),
                  cr0=entry.cr0, cr3=entry.cr3, cr4=entry.cr4, efer=entry.efer, gdt=entry.gdt, idt=entry.idt,
                  tr=_segment(entry.tr))


def pci_irqs(machine: Machine) -> list[PciIrq]:
    """INTx wiring of the PCI functions, for the MP table and ACPI."""
    out = []
    if machine.pci is None:
        return out
    for slot, fn in sorted(machine.pci.functions.items()):
        pin = fn.config.get(0x3D, 1)
        intx = getattr(fn, "intx", None)
        if pin and intx is not None:
            out.append(PciIrq(slot=slot, pin=pin, gsi=intx.gsi))
    return out


def host_is_pvm() -> bool:
    return os.path.exists("/sys/module/kvm_pvm")


def decide_syscall_assist(mode: str) -> tuple[bool, str]:
    """Whether to complete user-mode ``syscall`` in broiler, and why. ``auto`` asks the host: the probe VM
    (broiler/kvm/hostprobe.py, a few ms) runs one user-mode ``syscall`` and sees where it lands."""
    if mode in ("on", "off"):
        return mode == "on", f"--syscall-assist {mode}"
    probe = host_behaviour()
    return probe.needs_syscall_assist, f"auto: {probe.assist_reason()}"


def load_linux(machine: Machine, kernel: str, *, initrd: str | None, cmdline: str, profile: str,
               method: str = "auto", syscall_assist: str = "auto") -> LinuxBoot:
    """Load a bzImage or vmlinux and its tables; vCPU 0 enters it, the APs wait for INIT/SIPI.

    ``syscall_assist``: on, off, or auto (on where the host probe sees a user-mode ``syscall`` arrive at
    CPL3): complete user-mode ``syscall`` in broiler (broiler/emulate/syscall.py)."""
    kernel_bytes = read_input(kernel, "kernel")
    initrd_bytes = read_input(initrd, "initrd") if initrd else None
    extra = profile_cmdline(profile)
    if profile == "safe" and "initcall_blacklist=" not in cmdline:
        extra = f"{extra} {SAFE_INITCALL_BLACKLIST}".strip()
    assist, reason = decide_syscall_assist(syscall_assist)
    machine.decisions["syscall_assist"] = {"mode": syscall_assist, "enabled": assist, "reason": reason}
    if assist and "pti=" not in cmdline and "nopti" not in cmdline:
        # With page-table isolation user mode runs on a second top-level table that would lack the
        # trampoline mapping; a test guest on an emulating host has no use for it anyway.
        extra = f"{extra} nopti".strip()
    full_cmdline = f"{cmdline} {extra}".strip() if extra and extra not in cmdline else cmdline
    boot = prepare_linux_boot(machine.memory, kernel_bytes, cmdline=full_cmdline, ncpus=len(machine.vcpus),
                              initrd=initrd_bytes, pci_irqs=pci_irqs(machine), method=method, name=kernel,
                              reserved_io=firmware_declared_ports(machine.pio_bus))
    set_cpuid_profile(machine, profile)
    apply_entry(machine.vcpus[0], boot.entry)
    if assist:
        machine.enable_syscall_assist(layout.SYSCALL_TABLES)
    machine.emulate = emulate_exit
    machine.guest_name = f"linux {kernel} ({boot.method}, cpu profile {profile})"
    return boot




# -- userspace completion of instructions KVM's emulator cannot run ------------------------------------
class KvmGuestCpu:
    """broiler.emulate.GuestCpu over a stopped vCPU: registers via KVM_GET/SET_REGS and SREGS, memory
    through KVM_TRANSLATE and GuestMemory, exceptions through KVM_SET_VCPU_EVENTS."""

    SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")

    def __init__(self, thread: VcpuThread) -> None:
        self.thread = thread
        self.vcpu = thread.vcpu
        self.memory = thread.machine.memory
        self.regs = self.vcpu.get_regs()
        self.sregs = self.vcpu.get_sregs()
        self.dirty = False

    def bitness(self) -> int:
        from ..dump import cpu_bitness

        return cpu_bitness(self.sregs)

    def get_reg(self, name: str) -> int:
        if name.endswith("_base") and name[:2] in self.SEGMENTS:
            return int(getattr(self.sregs, name[:2]).base)
        if name in ("cr0", "cr2", "cr3", "cr4", "efer"):
            return int(getattr(self.sregs, name))
        return int(getattr(self.regs, name))

    def set_reg(self, name: str, value: int) -> None:
        setattr(self.regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
        self.dirty = True

    def _pages(self, addr: int, size: int, write: bool) -> list[tuple[int, int]]:
        from ..emulate.state import GuestFault

        out = []
        while size > 0:
            chunk = min(size, 0x1000 - (addr & 0xFFF))
            phys, valid = self.vcpu.translate(addr)
            if not valid:
                raise GuestFault(addr, write)
            out.append((phys, chunk))
            addr += chunk
            size -= chunk
        return out

    def read_linear(self, addr: int, size: int) -> bytes:
        from ..emulate.state import GuestFault

        try:
            return b"".join(self.memory.read(p, n) for p, n in self._pages(addr, size, False))
        except GuestMemoryError:
            raise GuestFault(addr, False) from None

    def write_linear(self, addr: int, data: bytes) -> None:
        from ..emulate.state import GuestFault

        pos = 0
        try:
            for phys, n in self._pages(addr, len(data), True):
                self.memory.write(phys, data[pos:pos + n])
                pos += n
        except GuestMemoryError:
            raise GuestFault(addr, True) from None

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        events = self.vcpu.get_vcpu_events()
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = int(error_code is not None)
        events.exception.error_code = error_code or 0
        self.commit()
        self.vcpu.set_vcpu_events(events)

    def x87_status_word(self) -> int:
        return int(self.vcpu.get_fpu().fsw)

    def commit(self) -> None:
        if self.dirty:
            self.vcpu.set_regs(self.regs)
            self.dirty = False


def reported_instruction(data: list[int]) -> bytes | None:
    """The instruction bytes KVM sent with an emulation failure (kvm_run.emulation_failure: flags bit 0 =
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, then insn_size and up to 15 bytes), or None."""
    if len(data) < 3 or not data[0] & 1:
        return None
    raw = data[1].to_bytes(8, "little") + data[2].to_bytes(8, "little")
    return raw[1:1 + min(raw[0], 15)] or None


def _code_changed(thread: VcpuThread, cpu: KvmGuestCpu) -> bool:
    """True when the bytes at RIP are no longer what KVM's emulator fetched: another vCPU rewrote the
    code in between (Linux's text_poke_bp puts an int3 there while it patches). Measured with -c 2:
    KVM reported `cc 90 …`, memory already held the finished `66 90`. Running KVM_RUN again executes
    what is there now, as a real CPU would after the patcher's serialising IPI."""
    reported = reported_instruction(thread.internal_error_data())
    if reported is None:
        return False
    rip = cpu.get_reg("rip")
    length = min(len(reported), 0x1000 - (rip & 0xFFF))     # stay on RIP's page
    from ..emulate.state import GuestFault

    try:
        now = cpu.read_linear(rip, length)
    except (GuestFault, OSError):     # unmapped: let the emulator report it
        return False
    return now != reported[:length]


def emulate_exit(thread: VcpuThread) -> str | None:
    """Machine.emulate hook: None when the instruction was completed, else why not (for the dump)."""
    from ..emulate import emulate

    try:
        cpu = KvmGuestCpu(thread)
        if cpu.bitness() == 64 and _code_changed(thread, cpu) and thread.code_changed_retries < 3:
            thread.code_changed_retries += 1
            thread.emulated["retried: code changed"] = thread.emulated.get("retried: code changed", 0) + 1
            return None
        thread.code_changed_retries = 0
        result = emulate(cpu)
    except (BroilerError, OSError) as exc:
        return f"userspace emulation failed: {exc}"
    if not result.handled:
        return str(result)
    cpu.commit()
    thread.emulated[result.instruction] = thread.emulated.get(result.instruction, 0) + 1
    return None
