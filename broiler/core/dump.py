"""The register dump printed when a guest dies: registers, segments, the instruction at RIP, stack."""

from __future__ import annotations

from ..errors import BroilerError
from ..kvm import abi
from .exits import ExitContext
from .memory import GuestMemory


def decode_instruction(code: bytes, rip: int, bitness: int = 64) -> str:
    """Disassemble the first instruction of ``code`` (iced-x86 if installed)."""
    try:
        import iced_x86  # type: ignore[import-not-found]
    except ImportError:
        return "(install iced-x86 to decode)"
    decoder = iced_x86.Decoder(bitness, code, ip=rip)
    instr = decoder.decode()
    if instr.is_invalid:
        return "(invalid instruction)"
    return f"{iced_x86.Formatter(iced_x86.FormatterSyntax.GAS).format(instr)}"


def _guest_bytes(thread: ExitContext, memory: GuestMemory | None, linear: int, size: int) -> bytes | None:
    if memory is None:
        return None
    try:
        phys, valid = thread.vcpu.translate(linear)
        if not valid:
            return None
        return memory.read(phys, size)
    except (BroilerError, OSError):
        return None


def cpu_bitness(sregs: abi.kvm_sregs) -> int:
    if sregs.efer & (1 << 10) and sregs.cs.l:
        return 64
    if sregs.cr0 & 1:
        return 32 if sregs.cs.db else 16
    return 16


def register_dump(thread: ExitContext, why: str, *, memory: GuestMemory | None, snapshot: bool = False) -> str:
    """Registers, segments, the instruction at RIP and the top of the stack (read from ``memory``)."""
    vcpu = thread.vcpu
    lines = [f"vCPU {vcpu.id} ({why})" if snapshot else f"\nbroiler: vCPU {vcpu.id} stopped: {why}"]
    internal = thread.internal_error_data() if thread.last_exit_reason() == abi.KVM_EXIT_INTERNAL_ERROR else []
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
    except BroilerError as exc:
        return "\n".join([*lines, f"  (registers unavailable: {exc})", ""])
    names = [field[0] for field in abi.kvm_regs._fields_]
    for i in range(0, len(names), 4):
        lines.append("  " + "  ".join(f"{n:>6}={getattr(r, n):016x}" for n in names[i : i + 4]))
    lines.append(
        f"  cr0={s.cr0:#x} cr2={s.cr2:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x} apic_base={s.apic_base:#x}"
    )
    for seg in ("cs", "ss", "ds", "es", "fs", "gs", "tr"):
        v = getattr(s, seg)
        lines.append(
            f"  {seg}: sel={v.selector:#06x} base={v.base:#x} limit={v.limit:#x} type={v.type} "
            f"dpl={v.dpl} l={v.l} db={v.db} present={v.present}"
        )
    lines.append(f"  gdt={s.gdt.base:#x}/{s.gdt.limit:#x} idt={s.idt.base:#x}/{s.idt.limit:#x}")
    bitness = cpu_bitness(s)
    rip_linear = r.rip + (s.cs.base if bitness != 64 else 0)
    code = _guest_bytes(thread, memory, rip_linear, 16)
    if code is None and len(internal) > 2:
        code = b"".join(w.to_bytes(8, "little") for w in internal[1:3])
    if code:
        lines.append(f"  code at rip: {code.hex(' ')}")
        lines.append(f"  instruction: {decode_instruction(code, r.rip, bitness)}")
    else:
        lines.append("  code at rip: (not readable)")
    stack = _guest_bytes(thread, memory, r.rsp + (s.ss.base if bitness != 64 else 0), 32)
    if stack:
        words = [int.from_bytes(stack[i : i + 8], "little") for i in range(0, len(stack), 8)]
        lines.append("  stack: " + " ".join(f"{w:016x}" for w in words))
    if internal:
        lines.append("  internal error data: " + " ".join(f"{w:#x}" for w in internal))
    return "\n".join(lines) + "\n"
