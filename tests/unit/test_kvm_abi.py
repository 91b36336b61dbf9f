"""Check broiler's transcription of linux/kvm.h against the host's header, with the C compiler."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from broiler.kvm import abi

IOCTLS = [
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID",
    "KVM_CREATE_VCPU",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_SET_TSS_ADDR",
    "KVM_SET_IDENTITY_MAP_ADDR",
    "KVM_CREATE_IRQCHIP",
    "KVM_CREATE_PIT2",
    "KVM_IRQ_LINE",
    "KVM_IRQ_LINE_STATUS",
    "KVM_SET_GSI_ROUTING",
    "KVM_IRQFD",
    "KVM_IOEVENTFD",
    "KVM_SIGNAL_MSI",
    "KVM_REGISTER_COALESCED_MMIO",
    "KVM_UNREGISTER_COALESCED_MMIO",
    "KVM_RUN",
    "KVM_GET_REGS",
    "KVM_SET_REGS",
    "KVM_GET_SREGS",
    "KVM_SET_SREGS",
    "KVM_SET_CPUID2",
    "KVM_GET_LAPIC",
    "KVM_SET_LAPIC",
    "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS",
    "KVM_SET_MSRS",
    "KVM_GET_MSRS",
    "KVM_SET_FPU",
    "KVM_GET_FPU",
    "KVM_TRANSLATE",
    "KVM_GET_MP_STATE",
    "KVM_SET_MP_STATE",
    "KVM_ENABLE_CAP",
    "KVM_GET_MSR_INDEX_LIST",
    "KVM_X86_SET_MSR_FILTER",
    "KVM_GET_XCRS",
    "KVM_SET_XCRS",
    "KVM_GET_XSAVE",
    "KVM_SET_XSAVE",
    "KVM_GET_XSAVE2",
    "KVM_GET_DEBUGREGS",
    "KVM_SET_DEBUGREGS",
    "KVM_GET_IRQCHIP",
    "KVM_SET_IRQCHIP",
    "KVM_GET_PIT2",
    "KVM_SET_PIT2",
    "KVM_GET_CLOCK",
    "KVM_SET_CLOCK",
    "KVM_GET_TSC_KHZ",
    "KVM_SET_TSC_KHZ",
]
STRUCTS = [
    "kvm_regs",
    "kvm_sregs",
    "kvm_segment",
    "kvm_dtable",
    "kvm_userspace_memory_region",
    "kvm_cpuid2",
    "kvm_cpuid_entry2",
    "kvm_ioeventfd",
    "kvm_irqfd",
    "kvm_irq_level",
    "kvm_msi",
    "kvm_coalesced_mmio_zone",
    "kvm_coalesced_mmio",
    "kvm_coalesced_mmio_ring",
    "kvm_pit_config",
    "kvm_irq_routing_entry",
    "kvm_irq_routing",
    "kvm_lapic_state",
    "kvm_vcpu_events",
    "kvm_fpu",
    "kvm_msr_entry",
    "kvm_msrs",
    "kvm_translation",
    "kvm_mp_state",
    "kvm_enable_cap",
    "kvm_xsave",
    "kvm_debugregs",
    "kvm_irqchip",
    "kvm_pit_state2",
    "kvm_clock_data",
    "kvm_msr_filter_range",
    "kvm_msr_filter",
]
CONSTANTS = [
    n for n in dir(abi) if n.startswith(("KVM_CAP_", "KVM_EXIT_")) and n not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
]
OFFSETS = {
    "RUN_EXIT_REASON": "exit_reason",
    "RUN_IO_DIRECTION": "io.direction",
    "RUN_IO_SIZE": "io.size",
    "RUN_IO_PORT": "io.port",
    "RUN_IO_COUNT": "io.count",
    "RUN_IO_DATA_OFFSET": "io.data_offset",
    "RUN_MMIO_PHYS_ADDR": "mmio.phys_addr",
    "RUN_MMIO_DATA": "mmio.data",
    "RUN_MMIO_LEN": "mmio.len",
    "RUN_MMIO_IS_WRITE": "mmio.is_write",
    "RUN_INTERNAL_SUBERROR": "internal.suberror",
    "RUN_INTERNAL_NDATA": "internal.ndata",
    "RUN_INTERNAL_DATA": "internal.data",
    "RUN_SYSTEM_EVENT_TYPE": "system_event.type",
    "RUN_IMMEDIATE_EXIT": "immediate_exit",
    "RUN_FAIL_ENTRY_REASON": "fail_entry.hardware_entry_failure_reason",
    "RUN_MSR_ERROR": "msr.error",
    "RUN_MSR_REASON": "msr.reason",
    "RUN_MSR_INDEX": "msr.index",
    "RUN_MSR_DATA": "msr.data",
}


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("cc") is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("needs a C compiler and linux/kvm.h")
    tmp = tmp_path_factory.mktemp("abi")
    lines = ["#include <linux/kvm.h>", "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    lines += [f'printf("{n} %lu\\n", (unsigned long){n});' for n in IOCTLS + CONSTANTS]
    lines += [f'printf("sizeof_{s} %zu\\n", sizeof(struct {s}));' for s in STRUCTS]
    lines += [f'printf("{k} %zu\\n", offsetof(struct kvm_run, {v}));' for k, v in OFFSETS.items()]
    lines += ['printf("RUN_SIZE %zu\\n", sizeof(struct kvm_run));', "return 0; }"]
    src = tmp / "abi.c"
    src.write_text("\n".join(lines))
    subprocess.run(["cc", str(src), "-o", str(tmp / "abi")], check=True)
    out = subprocess.run([str(tmp / "abi")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_ioctl_numbers(header_values: dict[str, int]) -> None:
    for name in IOCTLS:
        assert getattr(abi, name) == header_values[name], name


def test_capabilities_and_exit_reasons(header_values: dict[str, int]) -> None:
    for name in CONSTANTS:
        assert getattr(abi, name) == header_values[name], name


def test_struct_sizes(header_values: dict[str, int]) -> None:
    for name in STRUCTS:
        assert ctypes.sizeof(getattr(abi, name)) == header_values[f"sizeof_{name}"], name


def test_kvm_run_offsets(header_values: dict[str, int]) -> None:
    for name in [*OFFSETS, "RUN_SIZE"]:
        assert getattr(abi, name) == header_values[name], name
