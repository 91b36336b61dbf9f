"""Complete, in Python, instructions that KVM's instruction emulator cannot run.

On KVM-PVM every CPL0 instruction goes through KVM's emulator; the few it lacks end KVM_RUN with
KVM_EXIT_INTERNAL_ERROR (suberror 1). The machine then calls ``emulate(cpu)``: we decode the
instruction at CS:RIP with iced-x86, apply its effect through the GuestCpu interface and advance RIP
(or queue an exception), and the machine resumes the vCPU.

Handled here: int3 (#BP), fwait/wait, cmpxchg8b/cmpxchg16b (with or without lock), popcnt, movbe,
clac/stac (#UD at CPL > 0), and #UD for bytes that are no valid instruction (movbe with a register
operand, a misplaced lock prefix). In system.py: xgetbv, clwb, clflushopt, invpcid, rdpru, int $N,
ud0/ud1/ud2. popcnt, movbe, clac/stac and cmpxchg16b are completed whatever the vCPU's CPUID says: under
hardware virtualization (VMX/SVM) the CPU runs them for the guest regardless, and on KVM-PVM a Linux
guest sees the host's bits (boot/linux/cpuid.py), so a #UD there would only break what runs elsewhere.
Refused with a clear reason: xsetbv, xsave*, xrstor* (the guest must not use XSAVE here:
boot with clearcpuid=154). Anything else: "unsupported: <instruction>".

Atomicity: a ``lock`` instruction is performed as a read and a write while this vCPU is stopped;
another vCPU running at the same moment could interleave. Good enough for boot paths (SLUB's
cmpxchg16b is per-CPU data) but not a general guarantee.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import system
from .context import InsnContext, Unsupported, iced, mask
from .state import (
    FSW_ES,
    RFLAGS_AC,
    RFLAGS_AF,
    RFLAGS_CF,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_SF,
    RFLAGS_ZF,
    VECTOR_BP,
    VECTOR_GP,
    VECTOR_MF,
    VECTOR_UD,
    EmulationResult,
    GuestCpu,
    GuestFault,
)

MAX_INSN = 15


# --- instruction handlers -----------------------------------------------------------------------


def _int3(c: InsnContext) -> EmulationResult:
    # The #BP trap reports the address after the int3: advance first, then inject.
    c.advance()
    c.cpu.inject_exception(VECTOR_BP)
    return c.done("injected #BP")


def _wait(c: InsnContext) -> EmulationResult:
    if c.cpu.x87_status_word() & FSW_ES:
        c.cpu.inject_exception(VECTOR_MF)  # a fault: RIP stays on the wait
        return c.done("injected #MF (x87 exception pending)")
    c.advance()
    return c.done("no x87 exception pending: no-op")


def _cmpxchg_wide(c: InsnContext) -> EmulationResult:
    wide = c.ins.mnemonic == c.x.Mnemonic.CMPXCHG16B
    half = 8 if wide else 4
    addr = c.address()
    if wide and addr % 16:
        c.cpu.inject_exception(VECTOR_GP, 0)  # cmpxchg16b needs a 16-byte aligned operand
        return c.done("injected #GP(0): misaligned operand")
    m = mask(8 * half)
    mem = int.from_bytes(c.cpu.read_linear(addr, 2 * half), "little")
    ax, dx = c.cpu.get_reg("rax") & m, c.cpu.get_reg("rdx") & m
    if mem == (dx << (8 * half)) | ax:
        new = ((c.cpu.get_reg("rcx") & m) << (8 * half)) | (c.cpu.get_reg("rbx") & m)
        c.cpu.write_linear(addr, new.to_bytes(2 * half, "little"))
        c.set_flags(0, RFLAGS_ZF)
    else:
        c.cpu.set_reg("rax", mem & m)  # 32-bit halves zero-extend, as a 32-bit mov would
        c.cpu.set_reg("rdx", mem >> (8 * half))
        c.set_flags(RFLAGS_ZF, 0)
    c.advance()
    return c.done()


def _popcnt(c: InsnContext) -> EmulationResult:
    x, ins = c.x, c.ins
    size = x.RegisterExt.size(ins.op0_register)
    src = c.read_reg(ins.op1_register) if ins.op1_kind == x.OpKind.REGISTER else c.read_mem(size)
    c.write_reg(ins.op0_register, bin(src).count("1"))
    c.set_flags(RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_CF | RFLAGS_PF, RFLAGS_ZF if src == 0 else 0)
    c.advance()
    return c.done()


def _movbe(c: InsnContext) -> EmulationResult:
    x, ins = c.x, c.ins
    if ins.op0_kind == x.OpKind.REGISTER:
        size = x.RegisterExt.size(ins.op0_register)
        value = c.read_mem(size)
        c.write_reg(ins.op0_register, int.from_bytes(value.to_bytes(size, "little"), "big"))
    else:
        size = x.RegisterExt.size(ins.op1_register)
        value = c.read_reg(ins.op1_register)
        c.write_mem(size, int.from_bytes(value.to_bytes(size, "little"), "big"))
    c.advance()
    return c.done()


def _clac(c: InsnContext) -> EmulationResult:
    if c.cpl():
        return c.fault(VECTOR_UD, why="CPL > 0")
    c.set_flags(RFLAGS_AC, 0)
    c.advance()
    return c.done()


def _stac(c: InsnContext) -> EmulationResult:
    if c.cpl():
        return c.fault(VECTOR_UD, why="CPL > 0")
    c.set_flags(0, RFLAGS_AC)
    c.advance()
    return c.done()


def _xsave_family(c: InsnContext) -> EmulationResult:
    return EmulationResult(
        False, c.text, "XSAVE state is not emulated; boot Linux with clearcpuid=154 (the safe CPU profile does)"
    )


def _handlers() -> dict[int, Callable[[InsnContext], EmulationResult]]:
    M = iced().Mnemonic
    table: dict[int, Callable[[InsnContext], EmulationResult]] = {
        M.INT3: _int3,
        M.WAIT: _wait,
        M.CMPXCHG8B: _cmpxchg_wide,
        M.CMPXCHG16B: _cmpxchg_wide,
        M.POPCNT: _popcnt,
        M.MOVBE: _movbe,
        M.CLAC: _clac,
        M.STAC: _stac,
        **system.handlers(),
    }
    for name in (
        "XSETBV",
        "XSAVE",
        "XSAVE64",
        "XSAVEOPT",
        "XSAVEOPT64",
        "XSAVEC",
        "XSAVEC64",
        "XSAVES",
        "XSAVES64",
        "XRSTOR",
        "XRSTOR64",
        "XRSTORS",
        "XRSTORS64",
    ):
        if hasattr(M, name):
            table[getattr(M, name)] = _xsave_family
    return table


_HANDLERS: dict[int, Callable[[InsnContext], EmulationResult]] | None = None


def fetch(cpu: GuestCpu, linear: int) -> bytes:
    """Up to 15 instruction bytes at ``linear``, fewer if the next page is unmapped."""
    try:
        return cpu.read_linear(linear, MAX_INSN)
    except GuestFault:
        to_page_end = 0x1000 - (linear & 0xFFF)
        if to_page_end >= MAX_INSN:
            raise
        return cpu.read_linear(linear, to_page_end)


def decode(code: bytes, bitness: int, rip: int) -> tuple[Any, str]:
    """(iced Instruction, Intel-syntax text); text is the hex bytes if they do not decode."""
    x = iced()
    ins = x.Decoder(bitness, code, ip=rip).decode()
    if ins.code == x.Code.INVALID:
        return ins, "undecodable bytes " + code[: max(ins.len, 1)].hex(" ")
    return ins, x.Formatter(x.FormatterSyntax.INTEL).format(ins)


def _invalid_encoding(code: bytes, bitness: int) -> bool:
    """True when the bytes are no instruction at all (movbe with a register operand, a lock prefix on a
    non-lockable instruction, ...), not merely cut short: the CPU raises #UD for those."""
    decoder = iced().Decoder(bitness, code)
    decoder.decode()
    return bool(decoder.last_error == iced().DecoderError.INVALID_INSTRUCTION)


def emulate(cpu: GuestCpu, code: bytes | None = None) -> EmulationResult:
    """Emulate the instruction at CS:RIP. ``code``: its bytes if the exit already supplied them."""
    global _HANDLERS
    bitness = cpu.bitness()
    rip = cpu.get_reg("rip")
    if code is None:
        cs_base = 0 if bitness == 64 else cpu.get_reg("cs_base")
        try:
            code = fetch(cpu, (cs_base + rip) & mask(64 if bitness == 64 else 32))
        except GuestFault as e:
            return EmulationResult(False, f"instruction at {rip:#x}", f"cannot fetch it: {e}")
    ins, text = decode(code, bitness, rip)
    if ins.code == iced().Code.INVALID:
        if _invalid_encoding(code, bitness):
            cpu.inject_exception(VECTOR_UD)  # a fault: RIP stays on the bytes, as the CPU leaves it
            return EmulationResult(True, text, "injected #UD: invalid encoding")
        return EmulationResult(False, text, "not a valid instruction")
    if _HANDLERS is None:
        _HANDLERS = _handlers()
    handler = _HANDLERS.get(ins.mnemonic)
    if handler is None:
        return EmulationResult(False, text, "no userspace emulation for this instruction")
    try:
        return handler(InsnContext(cpu, ins, bitness, text))
    except GuestFault as e:
        return EmulationResult(False, text, f"guest page fault while emulating: {e}")
    except Unsupported as e:
        return EmulationResult(False, text, str(e))
