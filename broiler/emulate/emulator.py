"""Complete, in Python, instructions that KVM's instruction emulator cannot run.

On KVM-PVM every CPL0 instruction goes through KVM's emulator; the few it lacks end KVM_RUN with
KVM_EXIT_INTERNAL_ERROR (suberror 1). The machine then calls ``emulate(cpu)``: we decode the
instruction at CS:RIP with iced-x86, apply its effect through the GuestCpu interface and advance RIP
(or queue an exception), and the machine resumes the vCPU.

Handled: int3 (#BP), fwait/wait, cmpxchg8b/cmpxchg16b (with or without lock), popcnt, movbe,
clac/stac. Refused with a clear reason: xsetbv, xsave*, xrstor* (the guest must not use XSAVE here:
boot with clearcpuid=154). Anything else: "unsupported: <instruction>".

Atomicity: a ``lock`` instruction is performed as a read and a write while this vCPU is stopped;
another vCPU running at the same moment could interleave. Good enough for boot paths (SLUB's
cmpxchg16b is per-CPU data) but not a general guarantee.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..errors import ConfigError
from .state import (
    FSW_ES,
    GPR_NAMES,
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
    EmulationResult,
    GuestCpu,
    GuestFault,
)

MAX_INSN = 15
_iced: ModuleType | None = None


def iced() -> ModuleType:
    """The iced_x86 module, imported on first use so broiler runs without it until it is needed."""
    global _iced
    if _iced is None:
        try:
            import iced_x86
        except ImportError:
            raise ConfigError(
                "userspace instruction emulation needs the Python package 'iced-x86' (pip install iced-x86)"
            ) from None
        _iced = iced_x86
    return _iced


def _mask(bits: int) -> int:
    return (1 << bits) - 1


class _Unsupported(Exception):
    pass


class _Ctx:
    """One instruction being emulated: the decoded form and operand helpers."""

    def __init__(self, cpu: GuestCpu, ins: Any, bitness: int, text: str) -> None:
        self.cpu, self.ins, self.bitness, self.text = cpu, ins, bitness, text
        self.x = iced()

    # registers
    def _gpr(self, reg: int) -> tuple[str, int]:
        x = self.x
        if not x.RegisterExt.is_gpr(reg) or reg in (x.Register.AH, x.Register.CH, x.Register.DH, x.Register.BH):
            raise _Unsupported(f"register operand {reg} not handled")
        full = x.RegisterExt.full_register(reg)
        return GPR_NAMES[full - x.Register.RAX], x.RegisterExt.size(reg)

    def read_reg(self, reg: int) -> int:
        name, size = self._gpr(reg)
        return self.cpu.get_reg(name) & _mask(8 * size)

    def write_reg(self, reg: int, value: int) -> None:
        name, size = self._gpr(reg)
        if size >= 4:  # 32-bit writes zero-extend to 64 bits
            self.cpu.set_reg(name, value & _mask(8 * size))
        else:
            old = self.cpu.get_reg(name)
            self.cpu.set_reg(name, (old & ~_mask(8 * size)) | (value & _mask(8 * size)))

    # memory
    def address(self) -> int:
        x, ins = self.x, self.ins
        base, index = ins.memory_base, ins.memory_index
        if ins.is_ip_rel_memory_operand:
            ea, size = ins.memory_displacement, 8 if base == x.Register.RIP else 4
        else:
            ea = ins.memory_displacement
            if base != x.Register.NONE:
                ea += self.read_reg(base)
            if index != x.Register.NONE:
                ea += self.read_reg(index) * ins.memory_index_scale
            sized = base if base != x.Register.NONE else index
            size = x.RegisterExt.size(sized) if sized != x.Register.NONE else self.bitness // 8
        ea &= _mask(8 * size)
        seg = ins.memory_segment
        seg_names = {
            x.Register.ES: "es",
            x.Register.CS: "cs",
            x.Register.SS: "ss",
            x.Register.DS: "ds",
            x.Register.FS: "fs",
            x.Register.GS: "gs",
        }
        name = seg_names[seg]
        seg_base = 0 if self.bitness == 64 and name not in ("fs", "gs") else self.cpu.get_reg(name + "_base")
        return (seg_base + ea) & _mask(64 if self.bitness == 64 else 32)

    def read_mem(self, size: int) -> int:
        return int.from_bytes(self.cpu.read_linear(self.address(), size), "little")

    def write_mem(self, size: int, value: int) -> None:
        self.cpu.write_linear(self.address(), (value & _mask(8 * size)).to_bytes(size, "little"))

    # control flow
    def advance(self) -> None:
        self.cpu.set_reg("rip", self.ins.next_ip & _mask(64 if self.bitness == 64 else 32))

    def set_flags(self, clear: int, set_: int) -> None:
        rf = self.cpu.get_reg("rflags")
        self.cpu.set_reg("rflags", (rf & ~clear) | set_)

    def done(self, action: str = "emulated") -> EmulationResult:
        return EmulationResult(True, self.text, action)


# --- instruction handlers -----------------------------------------------------------------------


def _int3(c: _Ctx) -> EmulationResult:
    # The #BP trap reports the address after the int3: advance first, then inject.
    c.advance()
    c.cpu.inject_exception(VECTOR_BP)
    return c.done("injected #BP")


def _wait(c: _Ctx) -> EmulationResult:
    if c.cpu.x87_status_word() & FSW_ES:
        c.cpu.inject_exception(VECTOR_MF)  # a fault: RIP stays on the wait
        return c.done("injected #MF (x87 exception pending)")
    c.advance()
    return c.done("no x87 exception pending: no-op")


def _cmpxchg_wide(c: _Ctx) -> EmulationResult:
    wide = c.ins.mnemonic == c.x.Mnemonic.CMPXCHG16B
    half = 8 if wide else 4
    addr = c.address()
    if wide and addr % 16:
        c.cpu.inject_exception(VECTOR_GP, 0)  # cmpxchg16b needs a 16-byte aligned operand
        return c.done("injected #GP(0): misaligned operand")
    m = _mask(8 * half)
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


def _popcnt(c: _Ctx) -> EmulationResult:
    x, ins = c.x, c.ins
    size = x.RegisterExt.size(ins.op0_register)
    src = c.read_reg(ins.op1_register) if ins.op1_kind == x.OpKind.REGISTER else c.read_mem(size)
    c.write_reg(ins.op0_register, bin(src).count("1"))
    c.set_flags(RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_CF | RFLAGS_PF, RFLAGS_ZF if src == 0 else 0)
    c.advance()
    return c.done()


def _movbe(c: _Ctx) -> EmulationResult:
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


def _clac(c: _Ctx) -> EmulationResult:
    c.set_flags(RFLAGS_AC, 0)
    c.advance()
    return c.done()


def _stac(c: _Ctx) -> EmulationResult:
    c.set_flags(0, RFLAGS_AC)
    c.advance()
    return c.done()


def _xsave_family(c: _Ctx) -> EmulationResult:
    return EmulationResult(
        False, c.text, "XSAVE state is not emulated; boot Linux with clearcpuid=154 (the safe CPU profile does)"
    )


def _handlers() -> dict[int, Callable[[_Ctx], EmulationResult]]:
    M = iced().Mnemonic
    table: dict[int, Callable[[_Ctx], EmulationResult]] = {
        M.INT3: _int3,
        M.WAIT: _wait,
        M.CMPXCHG8B: _cmpxchg_wide,
        M.CMPXCHG16B: _cmpxchg_wide,
        M.POPCNT: _popcnt,
        M.MOVBE: _movbe,
        M.CLAC: _clac,
        M.STAC: _stac,
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


_HANDLERS: dict[int, Callable[[_Ctx], EmulationResult]] | None = None


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
        return ins, "undecodable bytes " + code.hex(" ")
    return ins, x.Formatter(x.FormatterSyntax.INTEL).format(ins)


def emulate(cpu: GuestCpu, code: bytes | None = None) -> EmulationResult:
    """Emulate the instruction at CS:RIP. ``code``: its bytes if the exit already supplied them."""
    global _HANDLERS
    bitness = cpu.bitness()
    rip = cpu.get_reg("rip")
    if code is None:
        cs_base = 0 if bitness == 64 else cpu.get_reg("cs_base")
        try:
            code = fetch(cpu, (cs_base + rip) & _mask(64 if bitness == 64 else 32))
        except GuestFault as e:
            return EmulationResult(False, f"instruction at {rip:#x}", f"cannot fetch it: {e}")
    ins, text = decode(code, bitness, rip)
    if ins.code == iced().Code.INVALID:
        return EmulationResult(False, text, "not a valid instruction")
    if _HANDLERS is None:
        _HANDLERS = _handlers()
    handler = _HANDLERS.get(ins.mnemonic)
    if handler is None:
        return EmulationResult(False, text, "no userspace emulation for this instruction")
    try:
        return handler(_Ctx(cpu, ins, bitness, text))
    except GuestFault as e:
        return EmulationResult(False, text, f"guest page fault while emulating: {e}")
    except _Unsupported as e:
        return EmulationResult(False, text, str(e))
