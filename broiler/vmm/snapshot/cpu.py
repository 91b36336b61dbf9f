"""The KVM side of a snapshot: every vCPU's state and the VM's in-kernel devices (irqchip, PIT, clock).

Each piece is the raw bytes of its kernel structure (kvm/state.py), handed back to the same ioctl at restore.
A piece this host's KVM cannot give is left out and named in ``saved`` (so a reader knows what it got).

Order. Saving reads the MSRs before the LAPIC: reading MSRs loads the vCPU, which may post an expired
TSC-deadline timer into the LAPIC, and reading the LAPIC afterwards then sees it. Restoring follows
Firecracker: CPUID, MP state, regs, sregs, XSAVE (or FPU), XCRs, debug registers, LAPIC, MSRs (after the
LAPIC, whose timer mode decides what IA32_TSC_DEADLINE means), vCPU events last (pending exceptions and
NMIs would be dropped by the earlier setters); for the VM: PIC master, slave, IOAPIC, PIT, kvmclock.
"""

from __future__ import annotations

import ctypes as C
import sys
from typing import Any

from ...errors import KvmError, SnapshotError
from ...kvm import Kvm, Vcpu, Vm, abi, state
from ...kvm.state import MSR_IA32_TSC_DEADLINE

# The CPUID bits that must be the same or a subset on the restoring host: leaf 1 ECX/EDX, leaf 7 EBX/ECX/EDX,
# XSAVE leaf 0xD EAX, extended leaf 0x80000001 ECX/EDX. Leaf 1 ECX bit 31 (hypervisor) is broiler's own.
_FEATURE_REGS = {
    (1, 0): ("ecx", "edx"),
    (7, 0): ("ebx", "ecx", "edx"),
    (0xD, 0): ("eax",),
    (0x80000001, 0): ("ecx", "edx"),
}
_BROILER_BITS = {(1, 0, "ecx"): 1 << 31}


def save_vcpu(kvm: Kvm, vcpu: Vcpu, msr_indices: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": vcpu.id, "saved": []}

    def keep(name: str, value: object) -> None:
        out[name] = value
        out["saved"].append(name)

    keep("cpuid", [bytes(e) for e in vcpu.get_cpuid()])
    keep("mp_state", vcpu.get_mp_state())
    keep("regs", bytes(vcpu.get_regs()))
    keep("sregs", bytes(vcpu.get_sregs()))
    size = state.xsave_size(kvm)
    if size:
        keep("xsave", state.get_xsave(vcpu, size))
    else:
        keep("fpu", bytes(vcpu.get_fpu()))
    for name, getter in (("xcrs", state.get_xcrs), ("debugregs", state.get_debugregs)):
        try:
            keep(name, getter(vcpu))
        except KvmError:
            pass  # this host's KVM lacks it: "saved" says so
    wanted = msr_indices + [i for i in state.UNLISTED_MSRS if i not in msr_indices]
    msrs, refused = state.get_msrs_tolerant(vcpu, wanted)
    keep("msrs", [[index, value] for index, value in msrs.items()])
    out["msrs_refused"] = [i for i in refused if i in msr_indices]  # an unlisted one may be absent: no news
    keep("lapic", bytes(vcpu.get_lapic()))  # the struct, not .regs: a c_char array's value stops at a NUL
    try:
        keep("tsc_khz", state.get_tsc_khz(vcpu))
    except KvmError:
        pass
    keep("events", bytes(vcpu.get_vcpu_events()))
    return out


def check_cpuid(kvm: Kvm, fresh: Vcpu, saved: list[bytes], path: str) -> None:
    """SnapshotError unless this host's KVM can give every CPU feature the snapshot's vCPUs had. What it
    can give: KVM_GET_SUPPORTED_CPUID, and what a fresh vCPU reads back (KVM-PVM reports more there than in
    its supported list, and accepts it)."""
    supported: dict[tuple[int, int], dict[str, int]] = {}
    for e in [*kvm.supported_cpuid(), *fresh.get_cpuid()]:
        bits = supported.setdefault((e.function, e.index), {})
        for reg in ("eax", "ebx", "ecx", "edx"):
            bits[reg] = bits.get(reg, 0) | getattr(e, reg)
    for raw in saved:
        entry = abi.kvm_cpuid_entry2.from_buffer_copy(raw)
        regs = _FEATURE_REGS.get((entry.function, entry.index))
        if regs is None:
            continue
        host = supported.get((entry.function, entry.index))
        for reg in regs:
            want = getattr(entry, reg) & ~_BROILER_BITS.get((entry.function, entry.index, reg), 0)
            have = host.get(reg, 0) if host is not None else 0
            if want & ~have:
                raise SnapshotError(
                    f"{path}: this host cannot give the CPU features the snapshot's guest had "
                    f"(CPUID {entry.function:#x}.{reg} bits {want & ~have:#x} missing)"
                )


def restore_vcpu(kvm: Kvm, vcpu: Vcpu, saved: dict[str, Any]) -> list[int]:
    """Put a vCPU back; the MSRs this KVM refused to set (the caller names them)."""
    entries = [abi.kvm_cpuid_entry2.from_buffer_copy(raw) for raw in saved["cpuid"]]
    vcpu.set_cpuid(entries)
    vcpu.set_mp_state(saved["mp_state"])
    vcpu.set_regs(abi.kvm_regs.from_buffer_copy(saved["regs"]))
    vcpu.set_sregs(abi.kvm_sregs.from_buffer_copy(saved["sregs"]))
    if "xsave" in saved:
        state.set_xsave(vcpu, saved["xsave"])
    elif "fpu" in saved:
        vcpu.set_fpu(abi.kvm_fpu.from_buffer_copy(saved["fpu"]))
    if "xcrs" in saved:
        state.set_xcrs(vcpu, saved["xcrs"])
    if "debugregs" in saved:
        state.set_debugregs(vcpu, saved["debugregs"])
    if "tsc_khz" in saved and kvm.check_extension(abi.KVM_CAP_TSC_CONTROL) > 0:
        state.set_tsc_khz(vcpu, saved["tsc_khz"])
    if len(saved["lapic"]) != C.sizeof(abi.kvm_lapic_state):
        raise SnapshotError(f"vCPU {vcpu.id}: the saved LAPIC is {len(saved['lapic'])} bytes")
    vcpu.set_lapic(abi.kvm_lapic_state.from_buffer_copy(saved["lapic"]))
    msrs = {int(index): int(value) for index, value in saved["msrs"]}
    # The deadline last, once IA32_TSC has its value: a deadline set against the fresh TSC could fire at once.
    deadline = msrs.pop(MSR_IA32_TSC_DEADLINE, None)
    refused = state.set_msrs_tolerant(vcpu, msrs)
    if deadline is not None:
        refused += state.set_msrs_tolerant(vcpu, {MSR_IA32_TSC_DEADLINE: deadline})
    vcpu.set_vcpu_events(abi.kvm_vcpu_events.from_buffer_copy(saved["events"]))
    return refused


def save_vm(vm: Vm, irqchip: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"saved": []}
    if irqchip:
        for name, chip in (
            ("pic_master", abi.KVM_IRQCHIP_PIC_MASTER),
            ("pic_slave", abi.KVM_IRQCHIP_PIC_SLAVE),
            ("ioapic", abi.KVM_IRQCHIP_IOAPIC),
        ):
            out[name] = state.get_irqchip(vm, chip)
            out["saved"].append(name)
        out["pit2"] = state.get_pit2(vm)
        out["saved"].append("pit2")
    try:
        out["clock"] = state.get_clock(vm)
        out["saved"].append("clock")
    except KvmError:
        pass
    return out


def restore_vm(vm: Vm, saved: dict[str, Any]) -> None:
    for name in ("pic_master", "pic_slave", "ioapic"):
        if name in saved:
            state.set_irqchip(vm, saved[name])
    if "pit2" in saved:
        state.set_pit2(vm, saved["pit2"])
    if "clock" in saved:
        state.set_clock(vm, saved["clock"])


def report_refused(what: str, vcpu_id: int, refused: list[int]) -> None:
    """One line on stderr naming MSRs KVM would not take (never on the exit path: once per snapshot)."""
    if refused:
        names = ", ".join(f"{index:#x}" for index in refused)
        print(f"broiler: vCPU {vcpu_id}: KVM refused to {what} MSR(s) {names}; left as they were", file=sys.stderr)
