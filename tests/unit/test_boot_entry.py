"""The one entry-state type: flat64's per-vCPU state and the protected-mode (Multiboot) state."""

from __future__ import annotations

from broiler.boot.entry import protected_mode_state
from broiler.boot.flat64 import (
    AP_STACK_STRIDE,
    GDT_ADDR,
    GDT_ENTRIES,
    PML4_ADDR,
    SEL_CODE64,
    SEL_DATA,
    STACK_TOP,
    flat64_entry_state,
)
from broiler.x86 import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, SEG_CODE_XR


def test_flat64_gives_every_vcpu_its_index_and_its_own_stack() -> None:
    states = [flat64_entry_state(k) for k in range(4)]
    assert [s.regs["rdi"] for s in states] == [0, 1, 2, 3]
    assert [s.regs["rsp"] for s in states] == [STACK_TOP - k * AP_STACK_STRIDE for k in range(4)]
    assert AP_STACK_STRIDE == 0x4000  # the README's flat64 contract: 16 KiB each
    s = states[0]
    assert (s.rip, s.regs["rflags"], s.cr3, s.gdt, s.idt) == (
        0x100000,
        2,
        PML4_ADDR,
        (GDT_ADDR, 8 * len(GDT_ENTRIES) - 1),
        (0, 0),
    )
    assert s.cr0 & CR0_PG and s.cr4 & CR4_PAE and s.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert (s.cs.selector, s.cs.type, s.cs.l, s.cs.db, s.data.selector, s.data.db) == (
        SEL_CODE64,
        SEG_CODE_XR,
        1,
        0,
        SEL_DATA,
        1,
    )


def test_with_regs_changes_only_the_named_registers() -> None:
    s = protected_mode_state(0x100000, regs={"rax": 1})
    t = s.with_regs(rbx=2, rax=3)
    assert t.regs == {"rflags": 2, "rax": 3, "rbx": 2} and s.regs == {"rflags": 2, "rax": 1}
    assert (t.rip, t.cs, t.cr0) == (s.rip, s.cs, s.cr0) and t.mode == "protected32"
