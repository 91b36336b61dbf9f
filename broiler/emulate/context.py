"""One instruction being completed: the decoded form (iced-x86) and its operands over a GuestCpu.

Shared by the handler modules (emulator.py: the data instructions; system.py: the system ones).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import ConfigError
from ..x86 import CR4_LA57
from .state import GPR_NAMES, EmulationResult, GuestCpu

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


def mask(bits: int) -> int:
    return (1 << bits) - 1


class Unsupported(Exception):
    pass


class InsnContext:
    """One instruction being emulated: the decoded form and operand helpers."""

    def __init__(self, cpu: GuestCpu, ins: Any, bitness: int, text: str) -> None:
        self.cpu, self.ins, self.bitness, self.text = cpu, ins, bitness, text
        self.x = iced()

    # registers
    def _gpr(self, reg: int) -> tuple[str, int]:
        x = self.x
        if not x.RegisterExt.is_gpr(reg) or reg in (x.Register.AH, x.Register.CH, x.Register.DH, x.Register.BH):
            raise Unsupported(f"register operand {reg} not handled")
        full = x.RegisterExt.full_register(reg)
        return GPR_NAMES[full - x.Register.RAX], x.RegisterExt.size(reg)

    def read_reg(self, reg: int) -> int:
        name, size = self._gpr(reg)
        return self.cpu.get_reg(name) & mask(8 * size)

    def write_reg(self, reg: int, value: int) -> None:
        name, size = self._gpr(reg)
        if size >= 4:  # 32-bit writes zero-extend to 64 bits
            self.cpu.set_reg(name, value & mask(8 * size))
        else:
            old = self.cpu.get_reg(name)
            self.cpu.set_reg(name, (old & ~mask(8 * size)) | (value & mask(8 * size)))

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
        ea &= mask(8 * size)
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
        return (seg_base + ea) & mask(64 if self.bitness == 64 else 32)

    def read_mem(self, size: int) -> int:
        return int.from_bytes(self.cpu.read_linear(self.address(), size), "little")

    def write_mem(self, size: int, value: int) -> None:
        self.cpu.write_linear(self.address(), (value & mask(8 * size)).to_bytes(size, "little"))

    # control flow
    def advance(self) -> None:
        self.cpu.set_reg("rip", self.ins.next_ip & mask(64 if self.bitness == 64 else 32))

    def set_flags(self, clear: int, set_: int) -> None:
        rf = self.cpu.get_reg("rflags")
        self.cpu.set_reg("rflags", (rf & ~clear) | set_)

    def done(self, action: str = "emulated") -> EmulationResult:
        return EmulationResult(True, self.text, action)

    # architectural checks
    def cpl(self) -> int:
        return self.cpu.get_reg("cpl") & 3

    def has_feature(self, leaf: int, subleaf: int, register: str, bit: int) -> bool:
        """CPUID.(leaf, subleaf).register[bit] of this vCPU; register is "eax", "ebx", "ecx" or "edx"."""
        values = self.cpu.cpuid(leaf, subleaf)
        return bool(values["abcd".index(register[1])] >> bit & 1)

    def fault(self, vector: int, error_code: int | None = None, why: str = "") -> EmulationResult:
        """A fault: RIP stays on the instruction, the guest's handler sees it."""
        self.cpu.inject_exception(vector, error_code)
        name = {6: "#UD", 11: "#NP", 13: "#GP", 14: "#PF"}.get(vector, f"vector {vector}")
        code = "" if error_code is None else f"({error_code:#x})"
        return self.done(f"injected {name}{code}" + (f": {why}" if why else ""))

    def page_fault(self, addr: int, write: bool) -> EmulationResult:
        """#PF for a linear address the page tables do not map: CR2 = addr, error code P=0, W, U/S."""
        self.cpu.set_reg("cr2", addr)
        return self.fault(14, (2 if write else 0) | (4 if self.cpl() == 3 else 0), f"{addr:#x} not mapped")

    def is_canonical(self, addr: int) -> bool:
        """Canonical for the paging mode (bits 63:47 equal, 63:56 with 5-level paging); always true
        outside 64-bit mode."""
        if self.bitness != 64:
            return True
        bits = 56 if self.cpu.get_reg("cr4") & CR4_LA57 else 47
        return addr >> bits in (0, (1 << (64 - bits)) - 1)
