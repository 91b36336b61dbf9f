"""The system instructions completed in broiler/emulate/system.py, and #UD for invalid encodings, against
the dict-backed FakeCpu (no KVM): each effect, and each #UD/#GP/#NP/#PF the SDM lists given the CPUID."""

from __future__ import annotations

import pytest

from broiler.emulate import emulate
from broiler.emulate.state import CR4_OSXSAVE, CR4_PCIDE, RFLAGS_CF, RFLAGS_ZF
from tests.unit.test_emulate import CODE, DATA, FakeCpu, run

UD, NP, GP, PF = 6, 11, 13, 14
XGETBV = bytes.fromhex("0f01d0")
CLWB_RDI = bytes.fromhex("660fae37")  # clwb [rdi]
CLFLUSHOPT_RDI = bytes.fromhex("660fae3f")  # clflushopt [rdi]
INVPCID_RCX_RDI = bytes.fromhex("660f38820f")  # invpcid rcx, [rdi]
RDPRU = bytes.fromhex("0f01fd")
LEAF7_EBX = {"clwb": 1 << 24, "clflushopt": 1 << 23, "invpcid": 1 << 10}


def with_leaf7(cpu: FakeCpu, *features: str) -> FakeCpu:
    cpu.cpuid_leaves[(7, 0)] = (0, sum(LEAF7_EBX[f] for f in features), 0, 0)
    return cpu


# --- xgetbv ---------------------------------------------------------------------------------------


def test_xgetbv_reads_xcr0_into_edx_eax() -> None:
    cpu = FakeCpu(XGETBV)
    cpu.regs.update(cr4=0x20 | CR4_OSXSAVE, rcx=0xFFFF_FFFF_0000_0000, rax=-1 & (1 << 64) - 1, rdx=5)
    cpu.xcr0_value = 0x2_0000_0007
    r = emulate(cpu)
    assert r.handled and r.instruction == "xgetbv"
    assert (cpu.regs["rax"], cpu.regs["rdx"]) == (7, 2) and cpu.regs["rip"] == CODE + 3 and not cpu.injected


def test_xgetbv_without_osxsave_is_ud() -> None:
    cpu, r = run(XGETBV)
    assert r.handled and cpu.injected == [(UD, None)] and cpu.regs["rip"] == CODE


@pytest.mark.parametrize("ecx, xinuse, fault", [(1, False, True), (1, True, False), (2, True, True)])
def test_xgetbv_other_xcrs(ecx: int, xinuse: bool, fault: bool) -> None:
    cpu = FakeCpu(XGETBV)
    cpu.regs.update(cr4=CR4_OSXSAVE, rcx=ecx)
    if xinuse:
        cpu.cpuid_leaves[(0xD, 1)] = (1 << 2, 0, 0, 0)
    cpu.xcr0_value = 3
    r = emulate(cpu)
    assert r.handled
    if fault:
        assert cpu.injected == [(GP, 0)] and cpu.regs["rip"] == CODE
    else:  # XINUSE may report every enabled component in use: XCR0 is a correct answer
        assert not cpu.injected and cpu.regs["rax"] == 3


# --- clwb / clflushopt ----------------------------------------------------------------------------


@pytest.mark.parametrize("code, feature", [(CLWB_RDI, "clwb"), (CLFLUSHOPT_RDI, "clflushopt")])
def test_cache_line_writeback_is_a_checked_noop(code: bytes, feature: str) -> None:
    cpu = with_leaf7(FakeCpu(code), feature)
    cpu.regs["rdi"] = DATA + 0x40
    cpu.write_linear(DATA + 0x40, b"\xaa")
    r = emulate(cpu)
    assert r.handled and r.instruction.startswith(feature) and not cpu.injected
    assert cpu.regs["rip"] == CODE + 4 and cpu.read_linear(DATA + 0x40, 1) == b"\xaa"


@pytest.mark.parametrize("code, other", [(CLWB_RDI, "clflushopt"), (CLFLUSHOPT_RDI, "clwb")])
def test_cache_line_without_its_cpuid_bit_is_ud(code: bytes, other: str) -> None:
    cpu = with_leaf7(FakeCpu(code), other)  # only the other instruction is advertised
    assert emulate(cpu).handled and cpu.injected == [(UD, None)] and cpu.regs["rip"] == CODE


def test_cache_line_unmapped_is_pf_with_cr2() -> None:
    cpu = with_leaf7(FakeCpu(CLWB_RDI), "clwb")
    cpu.regs["rdi"] = 0x5000_0000
    r = emulate(cpu)
    assert r.handled and cpu.injected == [(PF, 0)] and cpu.regs["cr2"] == 0x5000_0000 and cpu.regs["rip"] == CODE


def test_cache_line_non_canonical_is_gp() -> None:
    cpu = with_leaf7(FakeCpu(CLWB_RDI), "clwb")
    cpu.regs["rdi"] = 0x0000_8000_0000_0000
    assert emulate(cpu).handled and cpu.injected == [(GP, 0)]


# --- invpcid --------------------------------------------------------------------------------------


def invpcid(kind: int, pcid: int = 0, linear: int = 0, *, cr4: int = 0x20, cpl: int = 0) -> FakeCpu:
    cpu = with_leaf7(FakeCpu(INVPCID_RCX_RDI), "invpcid")
    cpu.write_linear(DATA, pcid.to_bytes(8, "little") + linear.to_bytes(8, "little"))
    cpu.regs.update(rcx=kind, rdi=DATA, cr4=cr4, cpl=cpl)
    assert emulate(cpu).handled
    return cpu


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_invpcid_types_flush(kind: int) -> None:
    cpu = invpcid(kind, 0, 0xFFFF_8000_0000_1000)
    assert cpu.tlb_flushes == 1 and not cpu.injected and cpu.regs["rip"] == CODE + 5


def test_invpcid_with_pcide_takes_a_pcid() -> None:
    cpu = invpcid(1, 0x123, cr4=0x20 | CR4_PCIDE)
    assert cpu.tlb_flushes == 1 and not cpu.injected


@pytest.mark.parametrize(
    "kind, pcid, linear, cr4, cpl",
    [
        (4, 0, 0, 0x20, 0),  # no such type
        (0, 1 << 12, 0, 0x20 | CR4_PCIDE, 0),  # descriptor bits 63:12 reserved
        (0, 0, 0x0000_8000_0000_0000, 0x20, 0),  # type 0 needs a canonical address
        (0, 5, 0, 0x20, 0),  # a PCID without CR4.PCIDE
        (1, 5, 0, 0x20, 0),
        (2, 0, 0, 0x20, 3),  # CPL 3
    ],
)
def test_invpcid_gp(kind: int, pcid: int, linear: int, cr4: int, cpl: int) -> None:
    cpu = invpcid(kind, pcid, linear, cr4=cr4, cpl=cpl)
    assert cpu.injected == [(GP, 0)] and cpu.tlb_flushes == 0 and cpu.regs["rip"] == CODE


def test_invpcid_types_2_3_ignore_the_pcid_rules() -> None:
    assert invpcid(2, 5, 0x0000_8000_0000_0000).tlb_flushes == 1  # the descriptor's PCID/address unused


def test_invpcid_without_cpuid_is_ud_and_unmapped_descriptor_is_pf() -> None:
    cpu, r = run(INVPCID_RCX_RDI, rdi=DATA)
    assert r.handled and cpu.injected == [(UD, None)]
    cpu = with_leaf7(FakeCpu(INVPCID_RCX_RDI), "invpcid")
    cpu.regs["rdi"] = 0x6000_0000
    assert emulate(cpu).handled and cpu.injected == [(PF, 0)] and cpu.regs["cr2"] == 0x6000_0000


# --- rdpru ----------------------------------------------------------------------------------------


def test_rdpru_without_cpuid_is_ud() -> None:
    cpu, r = run(RDPRU)
    assert r.handled and cpu.injected == [(UD, None)] and cpu.regs["rip"] == CODE


@pytest.mark.parametrize("ecx, msr, want, cf", [(0, 0xE7, 0x1_0000_0002, True), (1, 0xE8, 9, True), (7, 0, 0, False)])
def test_rdpru_advertised(ecx: int, msr: int, want: int, cf: bool) -> None:
    cpu = FakeCpu(RDPRU)
    cpu.cpuid_leaves[(0x8000_0008, 0)] = (0, 1 << 4, 0, 0)
    cpu.msrs = {0xE7: 0x1_0000_0002, 0xE8: 9}
    cpu.regs.update(rcx=ecx, rflags=0x2 | RFLAGS_ZF)
    assert emulate(cpu).handled and not cpu.injected
    assert (cpu.regs["rdx"] << 32 | cpu.regs["rax"]) == want
    assert cpu.regs["rflags"] == 0x2 | (RFLAGS_CF if cf else 0)


# --- int $N ---------------------------------------------------------------------------------------

IDT = 0x20000  # a page of its own, mapped by idt_gate


def idt_gate(cpu: FakeCpu, vector: int, attr: int, long_mode: bool = True) -> None:
    size = 16 if long_mode else 8
    cpu.map(IDT)
    cpu.map(IDT + 0x1000)
    cpu.write_linear(IDT + vector * size, bytes(5) + bytes([attr]) + bytes(size - 6))
    cpu.regs.update(idt_base=IDT, idt_limit=size * 256 - 1)


@pytest.mark.parametrize("vector", [0x80, 0x0D, 0x08, 0x03])
def test_int_n_delivers_through_the_gate(vector: int) -> None:
    cpu = FakeCpu(bytes([0xCD, vector]))
    idt_gate(cpu, vector, 0x8E)
    r = emulate(cpu)
    assert r.handled and cpu.interrupts == [vector] and not cpu.injected and cpu.regs["rip"] == CODE + 2


@pytest.mark.parametrize(
    "attr, cpl, limit, fault",
    [
        (0x8E, 3, None, GP),  # DPL 0 gate from CPL 3
        (0xEE, 3, None, None),  # DPL 3 gate: allowed
        (0x0E, 0, None, NP),  # not present
        (0x8C, 0, None, GP),  # a call gate is no IDT gate
        (0x8E, 0, 0x80 * 16 - 1, GP),  # beyond the limit
    ],
)
def test_int_n_gate_checks(attr: int, cpl: int, limit: int | None, fault: int | None) -> None:
    cpu = FakeCpu(bytes.fromhex("cd80"))
    idt_gate(cpu, 0x80, attr)
    cpu.regs["cpl"] = cpl
    if limit is not None:
        cpu.regs["idt_limit"] = limit
    assert emulate(cpu).handled
    if fault is None:
        assert cpu.interrupts == [0x80] and cpu.regs["rip"] == CODE + 2
    else:
        assert cpu.injected == [(fault, 0x80 * 8 + 2)] and not cpu.interrupts and cpu.regs["rip"] == CODE


def test_int_n_protected_mode_8_byte_gates() -> None:
    cpu = FakeCpu(bytes.fromhex("cd21"), bits=32, rip=0x100000)
    idt_gate(cpu, 0x21, 0x8F, long_mode=False)  # 32-bit trap gate
    assert emulate(cpu).handled and cpu.interrupts == [0x21] and cpu.regs["rip"] == 0x100002


def test_int_n_unmapped_idt_is_pf() -> None:
    cpu = FakeCpu(bytes.fromhex("cd80"))
    cpu.regs.update(idt_base=0x4000_0000, idt_limit=0xFFF)
    assert emulate(cpu).handled and cpu.injected == [(PF, 0)] and cpu.regs["rip"] == CODE


# --- invalid encodings, ud*, clac/stac at CPL 3 ---------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "0f38f0c0",  # movbe eax, eax: movbe takes a memory operand
        "0f38f1c8",  # movbe eax, ecx (store form, register)
        "f090",  # lock nop
        "0f0b",  # ud2
        "0fb9c0",  # ud1
        "0fffc0",  # ud0
    ],
)
def test_invalid_encodings_are_ud(code: str) -> None:
    cpu, r = run(bytes.fromhex(code))
    assert r.handled and cpu.injected == [(UD, None)] and cpu.regs["rip"] == CODE, r


@pytest.mark.parametrize("code", ["0f01ca", "0f01cb"])
def test_clac_stac_at_cpl3_are_ud(code: str) -> None:
    cpu, r = run(bytes.fromhex(code), cpl=3)
    assert r.handled and cpu.injected == [(UD, None)] and cpu.regs["rflags"] == 0x2
