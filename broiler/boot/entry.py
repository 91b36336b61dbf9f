"""How a vCPU enters a guest, as plain data: every loader (flat64, Multiboot, Linux) returns one
``EntryState`` and ``Machine.enter`` copies it into kvm_regs/kvm_sregs.

KVM-free on purpose, so loaders and their tests never need /dev/kvm.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..x86 import CR0_ET, CR0_PE, RFLAGS_RESET, SEG_CODE_XR, SEG_DATA_RW, SEG_TSS_BUSY


@dataclass(frozen=True, slots=True)
class SegmentState:
    """Field for field the kvm_segment the machine fills in (padding aside). The defaults are a flat
    4 GiB ring-0 read/write data segment."""

    selector: int
    base: int = 0
    limit: int = 0xFFFF_FFFF
    type: int = SEG_DATA_RW
    present: int = 1
    dpl: int = 0
    db: int = 1
    s: int = 1
    l: int = 0
    g: int = 1
    avl: int = 0
    unusable: int = 0


def flat_code(selector: int, *, long_mode: bool) -> SegmentState:
    """A flat ring-0 execute/read code segment: 64-bit (L = 1, D/B = 0) or 32-bit (D/B = 1)."""
    return SegmentState(selector, type=SEG_CODE_XR, db=0 if long_mode else 1, l=int(long_mode))


def flat_data(selector: int) -> SegmentState:
    return SegmentState(selector)


@dataclass(frozen=True, slots=True)
class EntryState:
    """Everything one vCPU needs to start; general registers not named in ``regs`` are 0.

    ``gdt``, ``idt`` and ``tr`` left as None keep what KVM has (Multiboot leaves GDTR and IDTR
    undefined). ``memory`` lists (guest-physical address, bytes) the loader wants written before
    entry; loaders that write guest RAM themselves leave it empty."""

    mode: str  # "long64", "protected32" or "pvh32": for messages and tests
    rip: int
    regs: dict[str, int]  # kvm_regs field name -> value (rsp, rflags, rsi/rbx/rdi/rax ...)
    cr0: int
    cr3: int
    cr4: int
    efer: int
    cs: SegmentState
    data: SegmentState  # for ds, es, fs, gs and ss
    tr: SegmentState | None = None
    gdt: tuple[int, int] | None = None  # (base, limit)
    idt: tuple[int, int] | None = None
    memory: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)

    def with_regs(self, **regs: int) -> EntryState:
        """The same state with some general registers changed (an AP's stack and index, say)."""
        return replace(self, regs=self.regs | regs)


def protected_mode_state(rip: int, *, regs: dict[str, int], code: int = 0x08, data: int = 0x10) -> EntryState:
    """32-bit protected mode, paging off, flat segments, interrupts off; GDTR/IDTR left as KVM has them
    (the Multiboot state: the segment registers are loaded, the kernel sets up its own tables)."""
    return EntryState(
        mode="protected32",
        rip=rip,
        regs={"rflags": RFLAGS_RESET, **regs},
        cr0=CR0_PE | CR0_ET,
        cr3=0,
        cr4=0,
        efer=0,
        cs=flat_code(code, long_mode=False),
        data=flat_data(data),
    )


CR0_RESET = 0x6000_0010  # CD | NW | ET: CR0 after RESET or INIT (SDM vol. 3 §10.1.1)


def real_mode_segment(selector: int, *, code: bool = False) -> SegmentState:
    """A real-mode segment: base = selector * 16, 64 KiB limit, 16-bit."""
    return SegmentState(
        selector, base=selector << 4, limit=0xFFFF, type=SEG_CODE_XR if code else SEG_DATA_RW, db=0, g=0
    )


def real_mode_state(segment: int, offset: int) -> EntryState:
    """A CPU just out of reset, running at segment:offset in real mode (how firmware enters an ACPI
    waking vector, or an AP its SIPI page): CR0 as after RESET, paging and long mode off, IDTR the
    real-mode vector table at 0, every data segment 0, interrupts off."""
    return EntryState(
        mode="real16",
        rip=offset,
        regs={"rflags": RFLAGS_RESET},
        cr0=CR0_RESET,
        cr3=0,
        cr4=0,
        efer=0,
        cs=real_mode_segment(segment, code=True),
        data=real_mode_segment(0),
        tr=SegmentState(0, limit=0xFFFF, type=SEG_TSS_BUSY, s=0, db=0, g=0),
        gdt=(0, 0xFFFF),
        idt=(0, 0x3FF),
    )
