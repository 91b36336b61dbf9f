"""Completing, in broiler, the instructions KVM's emulator cannot run: the bridge between a stopped vCPU
(KVM_GET/SET_REGS, SREGS, KVM_TRANSLATE, vCPU events) and the KVM-free emulator in this package.

See docs/linux.md §7 for which instructions and why. ``InstructionCompleter`` is the
INSTRUCTION_COMPLETER stage of the VM's emulation-failure chain (core/exits.py).
"""

from __future__ import annotations

from ..core.dump import cpu_bitness
from ..core.exits import EmulationStage, ExitContext, ExitTable
from ..core.memory import GuestMemory
from ..errors import BroilerError, GuestMemoryError
from ..kvm.hostprobe import host_behaviour
from ..kvm.ioctls import Vcpu
from .emulator import emulate
from .state import GuestFault

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # kvm_cpuid_entry2.flags: the entry is for one subleaf
MAX_CODE_CHANGED_RETRIES = 3  # consecutive re-runs of one vCPU because the code at RIP changed
MAX_INSN_BYTES = 15  # the longest x86 instruction


class KvmGuestCpu:
    """broiler.emulate.GuestCpu over a stopped vCPU: registers via KVM_GET/SET_REGS and SREGS, memory
    through KVM_TRANSLATE and GuestMemory, exceptions through KVM_SET_VCPU_EVENTS."""

    SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")

    def __init__(self, vcpu: Vcpu, memory: GuestMemory) -> None:
        self.vcpu = vcpu
        self.memory = memory
        self.regs = self.vcpu.get_regs()
        self.sregs = self.vcpu.get_sregs()
        self.dirty = False
        self.sregs_dirty = False
        self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] | None = None

    def bitness(self) -> int:
        return cpu_bitness(self.sregs)

    def get_reg(self, name: str) -> int:
        if name.endswith("_base") and name[:2] in self.SEGMENTS:
            return int(getattr(self.sregs, name[:2]).base)
        if name in ("cr0", "cr2", "cr3", "cr4", "efer"):
            return int(getattr(self.sregs, name))
        if name == "cpl":
            return int(self.sregs.cs.dpl)  # CS.DPL is the CPL in protected and long mode (0 in real mode)
        if name in ("idt_base", "idt_limit"):
            return int(getattr(self.sregs.idt, name[4:]))
        return int(getattr(self.regs, name))

    def set_reg(self, name: str, value: int) -> None:
        if name == "cr2":
            self.sregs.cr2 = value & 0xFFFF_FFFF_FFFF_FFFF
            self.sregs_dirty = True
            return
        setattr(self.regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
        self.dirty = True

    def _pages(self, addr: int, size: int, write: bool) -> list[tuple[int, int]]:
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
        try:
            return b"".join(self.memory.read(p, n) for p, n in self._pages(addr, size, False))
        except GuestMemoryError:
            raise GuestFault(addr, False) from None

    def write_linear(self, addr: int, data: bytes) -> None:
        pos = 0
        try:
            for phys, n in self._pages(addr, len(data), True):
                self.memory.write(phys, data[pos : pos + n])
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

    def inject_interrupt(self, vector: int) -> None:
        # Injected as an interrupt that was already accepted, with RIP already past the `int`: the CPU
        # pushes that RIP and enters the gate as `int` would. Not as a "soft" interrupt: VMX would then
        # add an instruction length to RIP that userspace cannot set, and an exception injection of
        # vectors 8 and 10-14 needs an error code that `int` never pushes.
        events = self.vcpu.get_vcpu_events()
        events.interrupt.injected = 1
        events.interrupt.nr = vector
        events.interrupt.soft = 0
        self.commit()
        self.vcpu.set_vcpu_events(events)

    def x87_status_word(self) -> int:
        return int(self.vcpu.get_fpu().fsw)

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        if self._cpuid is None:
            self._cpuid = {}
            for e in self.vcpu.get_cpuid():
                index = e.index if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX else 0
                self._cpuid[(e.function, index)] = (e.eax, e.ebx, e.ecx, e.edx)
        key = (leaf, subleaf) if (leaf, subleaf) in self._cpuid else (leaf, 0)
        return self._cpuid.get(key, (0, 0, 0, 0))

    def xcr0(self) -> int:
        return self.vcpu.get_xcrs().get(0, 1)  # x87 state is always enabled

    def read_msr(self, index: int) -> int | None:
        return self.vcpu.get_msrs([index]).get(index)

    def is_mapped(self, addr: int) -> bool:
        return self.vcpu.translate(addr)[1]

    def flush_tlb(self) -> None:
        # KVM drops this vCPU's cached translations when KVM_SET_SREGS changes CR3 (it resets the MMU
        # context); writing the same CR3 back changes nothing. So CR3 goes out with PWT (bit 3, a
        # cache attribute of the top-level table without PCIDE, a PCID bit with it) flipped, then as
        # it was: two legal CR3 values, no guest instruction run in between.
        self.commit()
        cr3 = self.sregs.cr3
        self.sregs.cr3 = cr3 ^ 0x8
        self.vcpu.set_sregs(self.sregs)
        self.sregs.cr3 = cr3
        self.sregs_dirty = True
        self.commit()

    def commit(self) -> None:
        if self.sregs_dirty:
            self.vcpu.set_sregs(self.sregs)
            self.sregs_dirty = False
        if self.dirty:
            self.vcpu.set_regs(self.regs)
            self.dirty = False


def reported_instruction(data: list[int]) -> bytes | None:
    """The instruction bytes KVM sent with an emulation failure (kvm_run.emulation_failure: flags bit 0 =
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, then insn_size and up to 15 bytes), or None."""
    if len(data) < 3 or not data[0] & 1:
        return None
    raw = data[1].to_bytes(8, "little") + data[2].to_bytes(8, "little")
    return raw[1 : 1 + min(raw[0], 15)] or None


def fetched_code(thread: ExitContext, cpu: KvmGuestCpu) -> tuple[bytes | None, bool]:
    """(the instruction bytes KVM's emulator fetched, whether guest memory at RIP now holds others).

    Changed means another vCPU rewrote the code in between: Linux's text_poke_bp plants an int3 while it
    patches, and a -c 2 boot measured KVM reporting `cc 90 …` when memory already held the finished
    `66 90`. The bytes are completed from memory when KVM fetched fewer than an instruction's maximum
    (it stops at the page end), so the instruction is decoded from what the vCPU fetched, not from a
    second read that another vCPU may already have rewritten."""
    reported = reported_instruction(thread.internal_error_data())
    if reported is None or cpu.bitness() != 64:
        return None, False
    rip = cpu.get_reg("rip")
    length = min(len(reported), 0x1000 - (rip & 0xFFF))  # stay on RIP's page
    try:
        changed = cpu.read_linear(rip, length) != reported[:length]
        if len(reported) < MAX_INSN_BYTES:
            reported += cpu.read_linear(rip + len(reported), MAX_INSN_BYTES - len(reported))
    except (GuestFault, OSError):  # the rest unmapped: decode what was fetched (or report the fault)
        pass
    return reported, changed


class InstructionCompleter:
    """Completes in Python the instruction an emulation failure stopped at (the last stage of the chain:
    it claims every failure it is asked about, and a failure it cannot complete is fatal)."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self._code_changed_retries: dict[int, int] = {}  # vCPU id -> consecutive re-runs (see _code_changed)

    def register(self, exits: ExitTable) -> None:
        exits.add_emulation_handler(EmulationStage.INSTRUCTION_COMPLETER, self)

    def __call__(self, thread: ExitContext) -> bool:
        problem = self.complete(thread)
        if problem is None:
            return True
        thread.fatal(f"emulation failure: {problem}")
        return False

    def complete(self, thread: ExitContext) -> str | None:
        """None when the instruction was completed (or the vCPU should just run again), else why not."""
        vcpu_id = thread.vcpu.id
        try:
            cpu = KvmGuestCpu(thread.vcpu, self.memory)
            retries = self._code_changed_retries.get(vcpu_id, 0)
            code, changed = fetched_code(thread, cpu)
            if changed and retries < MAX_CODE_CHANGED_RETRIES:
                # A real CPU runs the new code after the patcher's serialising IPI: run again.
                self._code_changed_retries[vcpu_id] = retries + 1
                thread.note_emulated("retried: code changed")
                return None
            self._code_changed_retries[vcpu_id] = 0
            # What the vCPU fetched, even if rewritten since: that is the instruction it stopped at
            # (a CPU that fetched an int3 takes the #BP, and text_poke_bp's handler expects that).
            result = emulate(cpu, code)
        except (BroilerError, OSError) as exc:
            return f"userspace emulation failed: {exc}"
        if not result.handled:
            return str(result)
        cpu.commit()
        thread.note_emulated(result.instruction)
        return None


EMULATE_MISSING_MODES = ("auto", "on", "off")


def decide_emulate_missing(mode: str) -> tuple[bool, str]:
    """Whether to complete in broiler the instructions KVM's emulator lacks, and why. ``auto`` asks the
    host probe (broiler/kvm/hostprobe.py): a CPL0 ``popcnt`` that ends KVM_RUN with an emulation failure
    means this KVM runs CPL0 guest code in its instruction emulator, so guests will meet such instructions.
    That is the direct question; the syscall probe only tells KVM-PVM apart by a side effect."""
    if mode in ("on", "off"):
        return mode == "on", f"--emulate-missing {mode}"
    probe = host_behaviour()
    return probe.instruction_emulating, f"auto: {probe.emulation_reason()}"


def install_instruction_completer(
    exits: ExitTable, memory: GuestMemory, decisions: dict[str, dict[str, object]], mode: str = "auto"
) -> bool:
    """Register the completer as the emulation-failure chain's last stage when ``mode`` says so, and
    record the decision (``decisions["emulate_missing"]``, shown by --stats-json). True when on."""
    enabled, reason = decide_emulate_missing(mode)
    decisions["emulate_missing"] = {"mode": mode, "enabled": enabled, "reason": reason}
    if enabled:
        InstructionCompleter(memory).register(exits)
    return enabled
