"""broiler.emulate.syscall without KVM: the trampoline mapping and the register arithmetic of `syscall`."""

from __future__ import annotations

import pytest

from broiler.emulate.syscall import (
    TRAMPOLINE_VA,
    TrampolineConflict,
    complete_syscall,
    install_trampoline,
    table_indices,
)
from broiler.x86 import PTE_P, PTE_PS, PTE_RW, PTE_US, RFLAGS_RF

GPA = 0xFEBFF000
CR3 = 0x1000
SPARE = (0x10000, 0x11000, 0x12000, 0x13000)


class FakeMemory:
    """Sparse guest RAM of 8-byte words; every access is recorded."""

    def __init__(self) -> None:
        self.words: dict[int, int] = {}
        self.zeroed: list[int] = []

    def read(self, gpa: int) -> int:
        assert gpa % 8 == 0
        return self.words.get(gpa, 0)

    def write(self, gpa: int, value: int) -> None:
        self.words[gpa] = value

    def zero(self, gpa: int) -> None:
        self.zeroed.append(gpa)
        for a in range(gpa, gpa + 0x1000, 8):
            self.words.pop(a, None)

    def install(self, levels: int = 4, cr3: int = CR3, spare: tuple[int, ...] = SPARE) -> int:
        return install_trampoline(self.read, self.write, self.zero, cr3, levels, spare, gpa=GPA)

    def walk(self, va: int, levels: int = 4) -> list[int]:
        table, out = CR3, []
        for index in table_indices(va, levels):
            entry = self.read(table + index * 8)
            out.append(entry)
            table = entry & ~0xFFF & ((1 << 52) - 1)
        return out


def test_indices_of_the_trampoline_are_linux_unused_slot() -> None:
    assert table_indices(TRAMPOLINE_VA, 4) == [509, 0, 0, 0]
    assert table_indices(TRAMPOLINE_VA, 5) == [511, 509, 0, 0, 0]


def test_fresh_tables_get_three_pages_and_a_user_read_only_leaf() -> None:
    mem = FakeMemory()
    assert mem.install() == 3
    assert mem.zeroed == list(SPARE[:3])
    pml4e, pdpte, pde, pte = mem.walk(TRAMPOLINE_VA)
    assert pml4e == SPARE[0] | PTE_P | PTE_RW | PTE_US
    assert pdpte == SPARE[1] | PTE_P | PTE_RW | PTE_US
    assert pde == SPARE[2] | PTE_P | PTE_RW | PTE_US
    assert pte == GPA | PTE_P | PTE_US  # not writable, executable (no NX)
    assert set(mem.words) == {CR3 + 509 * 8, SPARE[0], SPARE[1], SPARE[2]}  # nothing else touched


def test_second_install_changes_nothing() -> None:
    mem = FakeMemory()
    mem.install()
    before = dict(mem.words)
    assert mem.install() == 0
    assert mem.words == before


def test_existing_guest_tables_are_followed_and_get_the_user_bit() -> None:
    mem = FakeMemory()
    mem.write(CR3 + 511 * 8, 0x5000 | PTE_P | PTE_RW)  # 5-level: the kernel's own top entry
    mem.write(0x5000 + 100 * 8, 0x7000 | PTE_P)  # an unrelated entry of the guest's table
    assert mem.install(levels=5) == 3
    top, p4d, *_, pte = mem.walk(TRAMPOLINE_VA, 5)
    assert top == 0x5000 | PTE_P | PTE_RW | PTE_US
    assert p4d == SPARE[0] | PTE_P | PTE_RW | PTE_US
    assert pte == GPA | PTE_P | PTE_US
    assert mem.read(0x5000 + 100 * 8) == 0x7000 | PTE_P


def test_conflicts_are_refused_without_writing() -> None:
    mem = FakeMemory()
    mem.install()
    leaf = SPARE[2]  # the PT page; its entry 0 is the trampoline
    mem.write(leaf, 0x123000 | PTE_P | PTE_US)
    with pytest.raises(TrampolineConflict, match="maps"):
        mem.install()
    huge = FakeMemory()
    huge.write(CR3 + 509 * 8, 0x2000 | PTE_P)
    huge.write(0x2000, 0x40000000 | PTE_P | PTE_PS)  # a 1 GiB page covers the trampoline
    with pytest.raises(TrampolineConflict, match="huge page"):
        huge.install()
    short = FakeMemory()
    with pytest.raises(TrampolineConflict, match="no spare"):
        short.install(spare=SPARE[:2])


STAR = (0x23 << 48) | (0x10 << 32)  # Linux: kernel CS 0x10, SS 0x18; user base 0x23
SFMASK = 0x47700  # Linux: TF DF IF IOPL AC NT


def test_complete_syscall_from_user_mode() -> None:
    e = complete_syscall(cpl=3, r11=0x246, star=STAR, sfmask=SFMASK, lstar=0xFFFFFFFF81C00080)
    assert (e.rip, e.cs_selector, e.ss_selector) == (0xFFFFFFFF81C00080, 0x10, 0x18)
    assert e.switch_privilege
    assert e.r11 == 0x246
    assert e.rflags == 0x46  # IF masked, bit 1 set


def test_complete_syscall_clears_rf_and_what_user_mode_cannot_hold() -> None:
    e = complete_syscall(
        cpl=3, r11=0x3202 | RFLAGS_RF | (1 << 17) | (1 << 19) | (1 << 20) | 1, star=STAR, sfmask=0x200, lstar=0x1000
    )
    assert e.r11 == 0x202 | RFLAGS_RF | 1  # IOPL, VM, VIF, VIP gone; RF kept for the kernel
    assert e.rflags == 0x3  # IF masked, RF cleared


def test_complete_syscall_at_cpl0_only_moves_rip() -> None:
    e = complete_syscall(cpl=0, r11=0x202, star=STAR, sfmask=SFMASK, lstar=0x1234)
    assert not e.switch_privilege and e.rip == 0x1234
