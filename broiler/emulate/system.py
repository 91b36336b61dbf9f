"""System instructions this host's KVM emulator lacks, completed as the SDM (and AMD's APM, for rdpru)
describes them for the vCPU's own CPUID (KVM_GET_CPUID2) and control registers.

| instruction | effect |
|---|---|
| xgetbv | EDX:EAX = XCR0 for ECX = 0 (also ECX = 1 where CPUID.(0DH,1):EAX[2] says XINUSE exists: the SDM
|   | lets XINUSE report a component in use even in its initial state, so XCR0 is a correct answer);
|   | #UD if CR4.OSXSAVE is clear, #GP(0) for any other ECX |
| clwb, clflushopt | nothing to write back (guest RAM is ordinary host memory); #UD where CPUID lacks the
|   | instruction, #GP(0) for a non-canonical address, #PF where the page tables do not map it |
| invpcid | type 0-3 checked as the SDM lists (CPL 0, descriptor bits 63:12 zero, canonical address for
|   | type 0, PCID 0 unless CR4.PCIDE); the effect is a flush of every translation, which the SDM allows
|   | for every type ("may invalidate more"); #UD where CPUID.(7,0):EBX[10] is clear |
| rdpru | #UD unless CPUID.80000008H:EBX[4]; ECX 0/1 read MPERF/APERF (CF = 1), others give 0 (CF = 0) |
| int $N | the IDT gate is checked as the CPU checks it (limit, type, DPL >= CPL, present: #GP/#NP with
|   | error code N*8+2) and vector N is delivered with RIP past the instruction |
| ud0, ud1, ud2 | #UD |
"""

from __future__ import annotations

from collections.abc import Callable

from ..x86 import CR0_PE, EFER_LMA
from .context import InsnContext, iced
from .state import (
    CR4_OSXSAVE,
    CR4_PCIDE,
    RFLAGS_AF,
    RFLAGS_CF,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_SF,
    RFLAGS_ZF,
    VECTOR_GP,
    VECTOR_NP,
    VECTOR_UD,
    EmulationResult,
    GuestFault,
)

MSR_MPERF, MSR_APERF = 0xE7, 0xE8
GATE_TYPES_64 = frozenset({0xE, 0xF})  # 64-bit interrupt and trap gates
GATE_TYPES_32 = frozenset({0x5, 0x6, 0x7, 0xE, 0xF})  # task, 16- and 32-bit interrupt/trap gates


def _set_edx_eax(c: InsnContext, value: int) -> None:
    c.cpu.set_reg("rax", value & 0xFFFF_FFFF)  # 32-bit results: the upper halves of RAX/RDX are cleared
    c.cpu.set_reg("rdx", (value >> 32) & 0xFFFF_FFFF)


def _xgetbv(c: InsnContext) -> EmulationResult:
    if not c.cpu.get_reg("cr4") & CR4_OSXSAVE:
        return c.fault(VECTOR_UD, why="CR4.OSXSAVE is clear")
    ecx = c.cpu.get_reg("rcx") & 0xFFFF_FFFF
    if ecx != 0 and not (ecx == 1 and c.has_feature(0xD, 1, "eax", 2)):
        return c.fault(VECTOR_GP, 0, f"XCR{ecx} does not exist")
    _set_edx_eax(c, c.cpu.xcr0())
    c.advance()
    return c.done()


def _cache_line(c: InsnContext) -> EmulationResult:
    bit = 24 if c.ins.mnemonic == c.x.Mnemonic.CLWB else 23
    if not c.has_feature(7, 0, "ebx", bit):
        return c.fault(VECTOR_UD, why="not in the vCPU's CPUID")
    addr = c.address()
    if not c.is_canonical(addr):
        return c.fault(VECTOR_GP, 0, "non-canonical address")
    if not c.cpu.is_mapped(addr):
        return c.page_fault(addr, write=False)
    c.advance()
    return c.done("no-op: guest RAM is host memory, nothing to write back")


def _invpcid_problem(c: InsnContext, kind: int, pcid: int, linear: int) -> str | None:
    """Why the SDM raises #GP(0) for this INVPCID, or None."""
    if kind > 3:
        return f"type {kind} does not exist"
    if pcid >> 12:
        return "descriptor bits 63:12 are not zero"
    if kind == 0 and not c.is_canonical(linear):
        return "non-canonical address in the descriptor"
    if kind <= 1 and pcid and not c.cpu.get_reg("cr4") & CR4_PCIDE:
        return "PCID != 0 with CR4.PCIDE clear"
    return None


def _invpcid(c: InsnContext) -> EmulationResult:
    if not c.has_feature(7, 0, "ebx", 10):
        return c.fault(VECTOR_UD, why="not in the vCPU's CPUID")
    if c.cpl():
        return c.fault(VECTOR_GP, 0, "CPL > 0")
    kind, addr = c.read_reg(c.ins.op0_register), c.address()
    if kind > 3 or not c.is_canonical(addr):
        return c.fault(VECTOR_GP, 0, f"type {kind} does not exist" if kind > 3 else "non-canonical operand")
    try:
        desc = c.cpu.read_linear(addr, 16)
    except GuestFault as e:
        return c.page_fault(e.addr, write=False)
    pcid, linear = int.from_bytes(desc[:8], "little"), int.from_bytes(desc[8:], "little")
    problem = _invpcid_problem(c, kind, pcid, linear)
    if problem is not None:
        return c.fault(VECTOR_GP, 0, problem)
    c.cpu.flush_tlb()
    c.advance()
    return c.done(f"type {kind}: flushed every translation")


def _rdpru(c: InsnContext) -> EmulationResult:
    if not c.has_feature(0x8000_0008, 0, "ebx", 4):
        return c.fault(VECTOR_UD, why="not in the vCPU's CPUID")
    ecx = c.cpu.get_reg("rcx") & 0xFFFF_FFFF
    value = c.cpu.read_msr((MSR_MPERF, MSR_APERF)[ecx]) if ecx < 2 else None
    _set_edx_eax(c, value or 0)
    c.set_flags(RFLAGS_CF | RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF, RFLAGS_CF if value else 0)
    c.advance()
    return c.done()


def _gate_problem(c: InsnContext, vector: int) -> tuple[int, str] | None:
    """(vector to raise, why) when ``int vector`` may not use its IDT gate, else None."""
    long_mode = bool(c.cpu.get_reg("efer") & EFER_LMA)
    size = 16 if long_mode else 8
    if vector * size + size - 1 > c.cpu.get_reg("idt_limit"):
        return VECTOR_GP, "beyond the IDT limit"
    gate = c.cpu.read_linear(c.cpu.get_reg("idt_base") + vector * size, 8)
    kind, dpl, present = gate[5] & 0xF, gate[5] >> 5 & 3, gate[5] >> 7
    if kind not in (GATE_TYPES_64 if long_mode else GATE_TYPES_32):
        return VECTOR_GP, f"gate type {kind:#x}"
    if dpl < c.cpl():
        return VECTOR_GP, f"gate DPL {dpl} < CPL {c.cpl()}"
    if not present:
        return VECTOR_NP, "gate not present"
    return None


def _int_n(c: InsnContext) -> EmulationResult:
    vector = c.ins.immediate8
    if c.cpu.get_reg("cr0") & CR0_PE:  # real mode has no gates to check: the IVT entry is used as it is
        try:
            problem = _gate_problem(c, vector)
        except GuestFault as e:
            return c.page_fault(e.addr, write=False)
        if problem is not None:
            return c.fault(problem[0], vector * 8 + 2, problem[1])  # error code: IDT bit set, EXT clear
    c.advance()  # the handler's frame holds the address of the next instruction
    c.cpu.inject_interrupt(vector)
    return c.done(f"delivered vector {vector:#x}")


def _undefined(c: InsnContext) -> EmulationResult:
    return c.fault(VECTOR_UD)


def handlers() -> dict[int, Callable[[InsnContext], EmulationResult]]:
    M = iced().Mnemonic
    return {
        M.XGETBV: _xgetbv,
        M.CLWB: _cache_line,
        M.CLFLUSHOPT: _cache_line,
        M.INVPCID: _invpcid,
        M.RDPRU: _rdpru,
        M.INT: _int_n,
        M.UD0: _undefined,
        M.UD1: _undefined,
        M.UD2: _undefined,
    }
