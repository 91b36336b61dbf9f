"""Userspace instruction emulation against a dict-backed GuestCpu (no KVM)."""

from __future__ import annotations

import sys

import pytest

from broiler.emulate import EmulationResult, GuestFault, decode, emulate
from broiler.emulate import context as context_mod
from broiler.emulate.state import GPR_NAMES, RFLAGS_AC, RFLAGS_CF, RFLAGS_PF, RFLAGS_ZF
from broiler.errors import ConfigError

CODE = 0xFFFF_FFFF_8100_0000
DATA = 0x7000


class FakeCpu:
    """Registers in a dict, guest-linear memory in mapped 4 KiB pages."""

    def __init__(self, code: bytes, bits: int = 64, rip: int = CODE) -> None:
        self.bits = bits
        self.regs = dict.fromkeys(GPR_NAMES, 0)
        self.regs.update(
            rip=rip, rflags=0x2, cr0=0x80050033, cs_base=0, ds_base=0, es_base=0, ss_base=0, fs_base=0, gs_base=0
        )
        self.regs.update(cr2=0, cr3=0x1000, cr4=0x20, efer=0x500 if bits == 64 else 0, cpl=0, idt_base=0, idt_limit=0)
        self.pages: dict[int, bytearray] = {}
        self.injected: list[tuple[int, int | None]] = []
        self.interrupts: list[int] = []
        self.fsw = 0
        self.cpuid_leaves: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.xcr0_value = 1
        self.msrs: dict[int, int] = {}
        self.tlb_flushes = 0
        self.map(rip & ~0xFFF)
        self.write_linear(rip, code)
        self.map(DATA & ~0xFFF)

    def map(self, page: int) -> None:
        self.pages.setdefault(page, bytearray(4096))

    def _page(self, addr: int, write: bool) -> bytearray:
        page = self.pages.get(addr & ~0xFFF)
        if page is None:
            raise GuestFault(addr, write)
        return page

    def bitness(self) -> int:
        return self.bits

    def get_reg(self, name: str) -> int:
        return self.regs[name]

    def set_reg(self, name: str, value: int) -> None:
        assert 0 <= value < 1 << 64, (name, value)
        self.regs[name] = value

    def read_linear(self, addr: int, size: int) -> bytes:
        return bytes(self._page(a, False)[a & 0xFFF] for a in range(addr, addr + size))

    def write_linear(self, addr: int, data: bytes) -> None:
        for a in range(addr, addr + len(data)):  # check every page first: no partial writes
            self._page(a, True)
        for i, b in enumerate(data):
            self._page(addr + i, True)[(addr + i) & 0xFFF] = b

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        self.injected.append((vector, error_code))

    def inject_interrupt(self, vector: int) -> None:
        self.interrupts.append(vector)

    def x87_status_word(self) -> int:
        return self.fsw

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return self.cpuid_leaves.get((leaf, subleaf), (0, 0, 0, 0))

    def xcr0(self) -> int:
        return self.xcr0_value

    def read_msr(self, index: int) -> int | None:
        return self.msrs.get(index)

    def is_mapped(self, addr: int) -> bool:
        return addr & ~0xFFF in self.pages

    def flush_tlb(self) -> None:
        self.tlb_flushes += 1


def run(code: bytes, **regs: int) -> tuple[FakeCpu, EmulationResult]:
    cpu = FakeCpu(code)
    cpu.regs.update(regs)
    return cpu, emulate(cpu)


# --- int3, fwait ----------------------------------------------------------------------------------


def test_int3_injects_bp_after_instruction() -> None:
    cpu, r = run(b"\xcc\x90")
    assert r.handled and r.instruction == "int3" and "#BP" in r.action
    assert cpu.regs["rip"] == CODE + 1 and cpu.injected == [(3, None)]


def test_fwait_is_a_noop_without_pending_exception() -> None:
    cpu, r = run(b"\x9b")
    assert r.handled and cpu.regs["rip"] == CODE + 1 and not cpu.injected


def test_fwait_with_pending_x87_exception_injects_mf() -> None:
    cpu = FakeCpu(b"\x9b")
    cpu.fsw = 0x80 | 0x01
    r = emulate(cpu)
    assert r.handled and cpu.injected == [(16, None)] and cpu.regs["rip"] == CODE


# --- cmpxchg16b / cmpxchg8b -----------------------------------------------------------------------

LOCK_CMPXCHG16B_RDI = bytes.fromhex("f0480fc70f")  # lock cmpxchg16b [rdi]


def test_cmpxchg16b_success() -> None:
    cpu = FakeCpu(LOCK_CMPXCHG16B_RDI)
    cpu.write_linear(DATA, (0x1111).to_bytes(8, "little") + (0x2222).to_bytes(8, "little"))
    cpu.regs.update(rdi=DATA, rax=0x1111, rdx=0x2222, rbx=0xAAAA, rcx=0xBBBB)
    r = emulate(cpu)
    assert r.handled and r.instruction == "lock cmpxchg16b [rdi]"
    assert cpu.read_linear(DATA, 16) == (0xAAAA).to_bytes(8, "little") + (0xBBBB).to_bytes(8, "little")
    assert cpu.regs["rflags"] & RFLAGS_ZF and cpu.regs["rip"] == CODE + 5
    assert (cpu.regs["rax"], cpu.regs["rdx"]) == (0x1111, 0x2222)


def test_cmpxchg16b_failure_loads_rdx_rax() -> None:
    cpu = FakeCpu(LOCK_CMPXCHG16B_RDI)
    old = (0x5555).to_bytes(8, "little") + (0x6666).to_bytes(8, "little")
    cpu.write_linear(DATA, old)
    cpu.regs.update(rdi=DATA, rax=0x1111, rdx=0x2222, rbx=0xAAAA, rcx=0xBBBB, rflags=0x2 | RFLAGS_ZF | RFLAGS_CF)
    r = emulate(cpu)
    assert r.handled and cpu.read_linear(DATA, 16) == old
    assert (cpu.regs["rax"], cpu.regs["rdx"]) == (0x5555, 0x6666)
    assert not cpu.regs["rflags"] & RFLAGS_ZF and cpu.regs["rflags"] & RFLAGS_CF  # only ZF changes


def test_cmpxchg16b_without_lock_and_with_displacement() -> None:
    cpu = FakeCpu(bytes.fromhex("480fc74e10"))  # cmpxchg16b [rsi+10h]
    cpu.regs.update(rsi=DATA - 0x10, rax=0, rdx=0, rbx=1, rcx=2)
    r = emulate(cpu)
    assert r.handled and cpu.read_linear(DATA, 16) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


def test_cmpxchg16b_misaligned_is_gp() -> None:
    cpu = FakeCpu(LOCK_CMPXCHG16B_RDI)
    cpu.regs.update(rdi=DATA + 8)
    r = emulate(cpu)
    assert r.handled and cpu.injected == [(13, 0)] and cpu.regs["rip"] == CODE


def test_cmpxchg8b_32bit_halves() -> None:
    cpu = FakeCpu(bytes.fromhex("f00fc70f"))  # lock cmpxchg8b [rdi]
    cpu.write_linear(DATA, (0x99).to_bytes(4, "little") + (0x77).to_bytes(4, "little"))
    cpu.regs.update(rdi=DATA, rax=0xFFFF_FFFF_0000_0001, rdx=0)
    r = emulate(cpu)
    assert r.handled and (cpu.regs["rax"], cpu.regs["rdx"]) == (0x99, 0x77)


def test_cmpxchg16b_unmapped_memory_is_reported() -> None:
    cpu = FakeCpu(LOCK_CMPXCHG16B_RDI)
    cpu.regs.update(rdi=0x5000_0000)
    r = emulate(cpu)
    assert not r.handled and "page fault" in str(r) and cpu.regs["rip"] == CODE


# --- popcnt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, src_reg, dst, value, expect",
    [
        ("f3480fb8c3", "rbx", "rax", 0xF0F0_0000_0000_0001, 9),  # popcnt rax, rbx
        ("f30fb8c3", "rbx", "rax", 0xFFFF_FFFF_0000_0003, 2),  # popcnt eax, ebx (low 32 bits)
        ("66f30fb8c3", "rbx", "rax", 0x0000_0000_0001_8001, 2),  # popcnt ax, bx
    ],
)
def test_popcnt_register(code: str, src_reg: str, dst: str, value: int, expect: int) -> None:
    cpu, r = run(
        bytes.fromhex(code), **{src_reg: value, dst: 0xDEAD_BEEF_DEAD_BEEF, "rflags": 0x2 | RFLAGS_CF | RFLAGS_PF}
    )
    assert r.handled and r.instruction.startswith("popcnt")
    if code.startswith("66"):
        assert cpu.regs[dst] == 0xDEAD_BEEF_DEAD_0000 | expect  # 16-bit write keeps the rest
    else:
        assert cpu.regs[dst] == expect  # 32/64-bit write zero-extends
    assert cpu.regs["rflags"] == 0x2  # CF, PF, ZF ... cleared
    assert cpu.regs["rip"] == CODE + len(bytes.fromhex(code))


def test_popcnt_zero_sets_zf_and_reads_memory() -> None:
    cpu = FakeCpu(bytes.fromhex("f3480fb807"))  # popcnt rax, [rdi]
    cpu.regs.update(rdi=DATA, rax=5)
    r = emulate(cpu)
    assert r.handled and cpu.regs["rax"] == 0 and cpu.regs["rflags"] & RFLAGS_ZF


# --- movbe ----------------------------------------------------------------------------------------


def test_movbe_load_and_store() -> None:
    cpu = FakeCpu(bytes.fromhex("480f38f006"))  # movbe rax, [rsi]
    cpu.write_linear(DATA, bytes(range(1, 9)))
    cpu.regs.update(rsi=DATA)
    assert emulate(cpu).handled and cpu.regs["rax"] == 0x0102030405060708
    cpu = FakeCpu(bytes.fromhex("0f38f10e"))  # movbe [rsi], ecx
    cpu.regs.update(rsi=DATA, rcx=0xFFFF_FFFF_1122_3344)
    assert emulate(cpu).handled and cpu.read_linear(DATA, 4) == bytes.fromhex("11223344")
    assert cpu.read_linear(DATA + 4, 4) == bytes(4) and cpu.regs["rip"] == CODE + 4
    assert emulate(FakeCpu(bytes.fromhex("0f38f10e"))).instruction == "movbe [rsi],ecx"


def test_movbe_16_bit_keeps_upper_bits_and_flags() -> None:
    cpu = FakeCpu(bytes.fromhex("660f38f006"))  # movbe ax, [rsi]
    cpu.write_linear(DATA, b"\xab\xcd")
    cpu.regs.update(rsi=DATA, rax=0x1234_5678_9ABC_DEF0, rflags=0x2 | RFLAGS_ZF)
    assert emulate(cpu).handled
    assert cpu.regs["rax"] == 0x1234_5678_9ABC_ABCD and cpu.regs["rflags"] == 0x2 | RFLAGS_ZF


def test_rip_relative_operand() -> None:
    cpu = FakeCpu(bytes.fromhex("0f38f00505000000"))  # movbe eax, [rip+5]
    cpu.write_linear(CODE + 8 + 5, bytes.fromhex("deadbeef"))
    assert emulate(cpu).handled and cpu.regs["rax"] == 0xDEADBEEF


def test_gs_segment_base() -> None:
    cpu = FakeCpu(bytes.fromhex("65480f38f0042510000000"))  # movbe rax, gs:[10h]
    cpu.regs["gs_base"] = DATA - 0x10
    cpu.write_linear(DATA, (1).to_bytes(8, "big"))
    r = emulate(cpu)
    assert r.handled and cpu.regs["rax"] == 1, r


# --- clac / stac ----------------------------------------------------------------------------------


def test_clac_and_stac() -> None:
    cpu, r = run(bytes.fromhex("0f01ca"), rflags=0x2 | RFLAGS_AC | RFLAGS_ZF)
    assert r.handled and cpu.regs["rflags"] == 0x2 | RFLAGS_ZF and cpu.regs["rip"] == CODE + 3
    cpu, r = run(bytes.fromhex("0f01cb"))
    assert r.handled and cpu.regs["rflags"] == 0x2 | RFLAGS_AC


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, text",
    [
        ("0f01d1", "xsetbv"),
        ("0fae27", "xsave [rdi]"),
        ("480fae2f", "xrstor64 [rdi]"),
    ],
)
def test_xsave_family_refused(code: str, text: str) -> None:
    cpu, r = run(bytes.fromhex(code))
    assert not r.handled and r.instruction == text
    assert str(r).startswith(f"unsupported: {text}") and "clearcpuid=154" in str(r)
    assert cpu.regs["rip"] == CODE and not cpu.injected


def test_other_instruction_unsupported() -> None:
    cpu, r = run(bytes.fromhex("0fa2"))  # cpuid
    assert not r.handled and str(r).startswith("unsupported: cpuid")


def test_cut_short_bytes_are_not_guessed_at() -> None:
    cpu = FakeCpu(b"\x90")
    r = emulate(cpu, b"\x0f\x38\xf0")  # the exit's bytes end inside a movbe: no verdict possible
    assert not r.handled and "unsupported" in str(r) and not cpu.injected


# --- fetching, modes, dependencies ----------------------------------------------------------------


def test_fetch_stops_at_unmapped_page() -> None:
    rip = 0x10FFF  # one byte before an unmapped page
    cpu = FakeCpu(b"\xcc", rip=rip)
    r = emulate(cpu)
    assert r.handled and cpu.regs["rip"] == rip + 1


def test_code_bytes_from_the_exit() -> None:
    cpu = FakeCpu(b"\x90")  # memory says nop; the exit says int3
    assert emulate(cpu, b"\xcc").handled and cpu.injected == [(3, None)]


def test_protected_mode_32_bit() -> None:
    cpu = FakeCpu(bytes.fromhex("f30fb8c3"), bits=32, rip=0x100000)  # popcnt eax, ebx
    cpu.regs.update(rbx=0xFF)
    assert emulate(cpu).handled and cpu.regs["rax"] == 8 and cpu.regs["rip"] == 0x100004


def test_32_bit_ds_base_applies() -> None:
    cpu = FakeCpu(bytes.fromhex("0f38f006"), bits=32, rip=0x100000)  # movbe eax, [esi]
    cpu.regs.update(ds_base=0x1000, rsi=DATA - 0x1000)
    cpu.write_linear(DATA, bytes.fromhex("01020304"))
    assert emulate(cpu).handled and cpu.regs["rax"] == 0x01020304


def test_decode_text() -> None:
    _, text = decode(bytes.fromhex("f0480fc70f"), 64, 0)
    assert text == "lock cmpxchg16b [rdi]"


def test_gpr_order_matches_iced() -> None:
    import iced_x86

    assert [iced_x86.Register.RAX + i for i in range(16)] == [getattr(iced_x86.Register, n.upper()) for n in GPR_NAMES]


def test_missing_iced_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context_mod, "_iced", None)
    monkeypatch.setitem(sys.modules, "iced_x86", None)
    with pytest.raises(ConfigError, match="iced-x86"):
        emulate(FakeCpu(b"\xcc"))
