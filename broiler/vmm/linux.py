"""Booting Linux on a Machine: the glue between broiler/linux (tables, loaders, CPU profiles, all
KVM-free) and the running VM (vCPU registers, CPUID, the userspace instruction emulator).

See docs/linux.md for the boot flow and what this host's KVM-PVM allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..boot.entry import EntryState
from ..boot.firmware import PciIrq
from ..boot.firmware import pci_irqs as firmware_pci_irqs
from ..boot.linux import layout
from ..boot.linux.boot import LinuxBoot, prepare_linux_boot
from ..boot.linux.cpuid import CpuidEntry, apply_profile, profile_cmdline
from ..emulate.kvm_cpu import install_instruction_completer
from ..inputs import read_input
from ..kvm import abi
from ..kvm.hostprobe import host_behaviour
from .platform import firmware_declared_ports

if TYPE_CHECKING:
    from ..kvm.ioctls import Vcpu
    from .machine import Machine

DEFAULT_CMDLINE = (
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr loglevel=8 nowatchdog "
    "cryptomgr.notests pci=conf1 reboot=k panic=-1"
)


# On instruction-emulating hosts these initcalls took over 550 s of a ~770 s boot (../shared/host-kvm.md)
# and a test guest needs none of them; the `safe` profile skips them. The last two were measured with
# broiler (initcall_debug, Debian 6.1 cloud kernel, 4 GiB): tracer_init_tracefs 170 s, dev_map_init 68 s.
SAFE_INITCALL_BLACKLIST = (
    "initcall_blacklist=init_kprobe_trace,trace_eval_init,crypto_kdf108_init,"
    "slab_sysfs_init,blake2s_mod_init,tracer_init_tracefs,dev_map_init"
)


def default_profile() -> str:
    """``safe`` on hosts whose KVM runs CPL0 guest code in its instruction emulator (the probe VM says so,
    broiler/kvm/hostprobe.py; KVM-PVM is one), else ``host``."""
    return "safe" if host_behaviour().instruction_emulating else "host"


def _to_plain(e: abi.kvm_cpuid_entry2) -> CpuidEntry:
    return CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


def set_cpuid_profile(machine: Machine, profile: str) -> None:
    supported = [_to_plain(e) for e in machine.kvm.supported_cpuid()]
    n = len(machine.vcpus)
    for vcpu in machine.vcpus:
        entries = [
            abi.kvm_cpuid_entry2(
                function=e.function, index=e.index, flags=e.flags, eax=e.eax, ebx=e.ebx, ecx=e.ecx, edx=e.edx
            )
            for e in apply_profile(profile, supported, vcpu.id, n)
        ]
        vcpu.set_cpuid(entries)


def apply_entry(vcpu: Vcpu, entry: EntryState) -> None:
    from .machine import Machine

    Machine.enter(vcpu, entry)


def pci_irqs(machine: Machine) -> list[PciIrq]:
    """INTx wiring of the PCI functions, for the MP table and ACPI."""
    return firmware_pci_irqs(machine.pci)


def decide_syscall_assist(mode: str) -> tuple[bool, str]:
    """Whether to complete user-mode ``syscall`` in broiler, and why. ``auto`` asks the host: the probe VM
    (broiler/kvm/hostprobe.py, a few ms) runs one user-mode ``syscall`` and sees where it lands."""
    if mode in ("on", "off"):
        return mode == "on", f"--syscall-assist {mode}"
    probe = host_behaviour()
    return probe.needs_syscall_assist, f"auto: {probe.assist_reason()}"


def load_linux(
    machine: Machine,
    kernel: str,
    *,
    initrd: str | None,
    cmdline: str,
    profile: str,
    method: str = "auto",
    syscall_assist: str = "auto",
    emulate_missing: str = "auto",
) -> LinuxBoot:
    """Load a bzImage or vmlinux and its tables; vCPU 0 enters it, the APs wait for INIT/SIPI.

    ``syscall_assist``: on, off, or auto (on where the host probe sees a user-mode ``syscall`` arrive at
    CPL3): complete user-mode ``syscall`` in broiler (broiler/emulate/syscall.py). ``emulate_missing``: on,
    off, or auto: complete the instructions KVM's emulator lacks (emulate/kvm_cpu.py)."""
    kernel_bytes = read_input(kernel, "kernel")
    initrd_bytes = read_input(initrd, "initrd") if initrd else None
    extra = profile_cmdline(profile)
    if profile == "safe" and "initcall_blacklist=" not in cmdline:
        extra = f"{extra} {SAFE_INITCALL_BLACKLIST}".strip()
    assist, reason = decide_syscall_assist(syscall_assist)
    machine.decisions["syscall_assist"] = {"mode": syscall_assist, "enabled": assist, "reason": reason}
    if assist and "pti=" not in cmdline and "nopti" not in cmdline:
        # With page-table isolation user mode runs on a second top-level table that would lack the
        # trampoline mapping; a test guest on an emulating host has no use for it anyway.
        extra = f"{extra} nopti".strip()
    full_cmdline = f"{cmdline} {extra}".strip() if extra and extra not in cmdline else cmdline
    boot = prepare_linux_boot(
        machine.memory,
        kernel_bytes,
        cmdline=full_cmdline,
        ncpus=len(machine.vcpus),
        initrd=initrd_bytes,
        pci_irqs=pci_irqs(machine),
        method=method,
        name=kernel,
        reserved_io=firmware_declared_ports(machine.pio_bus),
        hpet=machine.config.hpet is True,  # by default Linux gets no HPET table (docs/linux.md)
    )
    set_cpuid_profile(machine, profile)
    apply_entry(machine.vcpus[0], boot.entry)
    if assist:
        machine.enable_syscall_assist(layout.SYSCALL_TABLES)
    install_instruction_completer(machine.exits, machine.memory, machine.decisions, emulate_missing)
    machine.guest_name = f"linux {kernel} ({boot.method}, cpu profile {profile})"
    return boot
