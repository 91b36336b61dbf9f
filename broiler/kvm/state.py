"""The state ioctls a snapshot needs (docs/snapshot.md): each vCPU's and the VM's in-kernel state as bytes.

One function per ioctl pair, kept out of ioctls.py so that file stays the hot, small core. A state travels
as the raw bytes of its kernel structure: the snapshot does not interpret it, it hands it back to the same
ioctl on the same kind of host. Failures are ``KvmError`` naming the ioctl, as everywhere in kvm/.
"""

from __future__ import annotations

import ctypes as C
import errno as E
import fcntl
import os

from ..errors import KvmError
from . import abi
from .ioctls import Kvm, Vcpu, Vm, _ioctl

MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
# MSRs KVM keeps per vCPU but leaves out of KVM_GET_MSR_INDEX_LIST (QEMU and Firecracker add them too):
# TSC_AUX (RDTSCP, RDPID), the MTRRs (default type, 8 variable pairs, the fixed ranges).
UNLISTED_MSRS = (
    0xC0000103,
    0x2FF,
    *range(0x200, 0x210),
    0x250,
    0x258,
    0x259,
    *range(0x268, 0x270),
)


def msr_index_list(kvm: Kvm) -> list[int]:
    """The MSRs KVM saves and restores for a vCPU (KVM_GET_MSR_INDEX_LIST on /dev/kvm)."""
    count = 64
    while True:
        buf = (C.c_uint32 * (count + 1))()
        buf[0] = count
        try:
            fcntl.ioctl(kvm.fd, abi.KVM_GET_MSR_INDEX_LIST, buf, True)
        except OSError as exc:
            if exc.errno == E.E2BIG and buf[0] > count:
                count = buf[0]
                continue
            raise KvmError("KVM_GET_MSR_INDEX_LIST", exc.errno or 0, os.strerror(exc.errno or 0)) from None
        return [int(buf[i + 1]) for i in range(buf[0])]


def xsave_size(kvm: Kvm) -> int:
    """Bytes of a vCPU's XSAVE state: KVM_CAP_XSAVE2's value where the host has it (AMX needs > 4 KiB),
    else the fixed 4 KiB of struct kvm_xsave; 0 where the host has no XSAVE state ioctls at all."""
    size = kvm.check_extension(abi.KVM_CAP_XSAVE2)
    if size > 0:
        return max(size, C.sizeof(abi.kvm_xsave))
    return C.sizeof(abi.kvm_xsave) if kvm.check_extension(abi.KVM_CAP_XSAVE) > 0 else 0


def get_xsave(vcpu: Vcpu, size: int) -> bytes:
    buf = C.create_string_buffer(size)
    request = abi.KVM_GET_XSAVE2 if size > C.sizeof(abi.kvm_xsave) else abi.KVM_GET_XSAVE
    _ioctl(vcpu.fd, request, buf)
    return buf.raw


def set_xsave(vcpu: Vcpu, data: bytes) -> None:
    # KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 said, whatever its number's size field says.
    _ioctl(vcpu.fd, abi.KVM_SET_XSAVE, C.create_string_buffer(data, len(data)))


def _get_struct(fd: int, request: int, struct: type[C.Structure]) -> bytes:
    value = struct()
    _ioctl(fd, request, value)
    return bytes(value)


def _set_struct(fd: int, request: int, struct: type[C.Structure], data: bytes) -> None:
    if len(data) != C.sizeof(struct):
        raise KvmError(abi.IOCTL_NAMES.get(request, hex(request)), E.EINVAL, f"{len(data)} bytes of state")
    _ioctl(fd, request, struct.from_buffer_copy(data))


def get_xcrs(vcpu: Vcpu) -> bytes:
    return _get_struct(vcpu.fd, abi.KVM_GET_XCRS, abi.kvm_xcrs)


def set_xcrs(vcpu: Vcpu, data: bytes) -> None:
    _set_struct(vcpu.fd, abi.KVM_SET_XCRS, abi.kvm_xcrs, data)


def get_debugregs(vcpu: Vcpu) -> bytes:
    return _get_struct(vcpu.fd, abi.KVM_GET_DEBUGREGS, abi.kvm_debugregs)


def set_debugregs(vcpu: Vcpu, data: bytes) -> None:
    _set_struct(vcpu.fd, abi.KVM_SET_DEBUGREGS, abi.kvm_debugregs, data)


def get_tsc_khz(vcpu: Vcpu) -> int:
    return _ioctl(vcpu.fd, abi.KVM_GET_TSC_KHZ)


def set_tsc_khz(vcpu: Vcpu, khz: int) -> None:
    _ioctl(vcpu.fd, abi.KVM_SET_TSC_KHZ, khz)


def get_irqchip(vm: Vm, chip_id: int) -> bytes:
    chip = abi.kvm_irqchip(chip_id)
    _ioctl(vm.fd, abi.KVM_GET_IRQCHIP, chip)
    return bytes(chip)


def set_irqchip(vm: Vm, data: bytes) -> None:
    _set_struct(vm.fd, abi.KVM_SET_IRQCHIP, abi.kvm_irqchip, data)


def get_pit2(vm: Vm) -> bytes:
    return _get_struct(vm.fd, abi.KVM_GET_PIT2, abi.kvm_pit_state2)


def set_pit2(vm: Vm, data: bytes) -> None:
    _set_struct(vm.fd, abi.KVM_SET_PIT2, abi.kvm_pit_state2, data)


def get_clock(vm: Vm) -> int:
    """The VM's kvmclock in ns (only the value: flags and host timestamps do not travel between hosts)."""
    data = abi.kvm_clock_data()
    _ioctl(vm.fd, abi.KVM_GET_CLOCK, data)
    return int(data.clock)


def set_clock(vm: Vm, ns: int) -> None:
    _ioctl(vm.fd, abi.KVM_SET_CLOCK, abi.kvm_clock_data(clock=ns))


def get_msrs_tolerant(vcpu: Vcpu, indices: list[int]) -> tuple[dict[int, int], list[int]]:
    """(values, refused): KVM_GET_MSRS stops at the first MSR it refuses; that one is set aside and the
    rest asked again, so one MSR this vCPU lacks (a feature its CPUID hides) costs one retry, not all."""
    values: dict[int, int] = {}
    refused: list[int] = []
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        values.update(got)
        done = len(got)
        if done == len(rest):
            break
        refused.append(rest[done])
        rest = rest[done + 1 :]
    return values, refused


def set_msrs_tolerant(vcpu: Vcpu, msrs: dict[int, int]) -> list[int]:
    """Set every MSR; those KVM_SET_MSRS refuses are skipped and returned (the caller says which)."""
    refused: list[int] = []
    rest = list(msrs.items())
    while rest:
        done = vcpu.set_msrs(dict(rest))
        if done == len(rest):
            break
        refused.append(rest[done][0])
        rest = rest[done + 1 :]
    return refused
