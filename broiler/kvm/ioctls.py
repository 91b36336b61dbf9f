"""Thin objects over the KVM file descriptors: ``Kvm`` (/dev/kvm), ``Vm`` and ``Vcpu``.

One method per ioctl; every failure becomes a ``KvmError`` naming the ioctl. Nothing here knows
about devices, buses or guests.
"""

from __future__ import annotations

import ctypes as C
import errno as E
import fcntl
import mmap
import os
from collections.abc import Iterable, Sequence

from ..errors import KvmError, KvmUnavailable
from . import abi

DEFAULT_KVM_PATH = "/dev/kvm"


_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_ulong]
_libc.ioctl.restype = C.c_int


def _ioctl_ulong(fd: int, request: int, arg: int) -> int:
    """ioctl with an unsigned long argument (fcntl.ioctl only passes a C int)."""
    ret = _libc.ioctl(fd, request, arg)
    if ret < 0:
        err = C.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _ioctl(fd: int, request: int, arg: object = 0, what: str | None = None) -> int:
    try:
        if isinstance(arg, int):
            if arg > 0x7FFFFFFF:
                return _ioctl_ulong(fd, request, arg)
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)  # type: ignore[call-overload]
    except OSError as exc:
        raise KvmError(
            what or abi.IOCTL_NAMES.get(request, hex(request)), exc.errno or 0, os.strerror(exc.errno or 0)
        ) from None


class Kvm:
    """The /dev/kvm system fd."""

    def __init__(self, path: str = DEFAULT_KVM_PATH) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this host has no KVM "
                "(load kvm_intel/kvm_amd, or run on a host with virtualization)"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"permission denied opening {path}: add yourself to the kvm group or run as root"
            ) from None
        except OSError as exc:
            raise KvmUnavailable(f"cannot open {path}: {exc.strerror}") from None
        version = _ioctl(self.fd, abi.KVM_GET_API_VERSION)
        if version != abi.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path} speaks KVM API version {version}, broiler needs {abi.KVM_API_VERSION}")
        self.vcpu_mmap_size = _ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        """The capability's value; > 0 means supported (0 and errors mean not)."""
        try:
            return fcntl.ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def require(self, caps: Iterable[tuple[int, str]]) -> None:
        for cap, name in caps:
            if self.check_extension(cap) <= 0:
                raise KvmUnavailable(f"this host's KVM lacks a capability broiler needs: {name}")

    def supported_cpuid(self) -> list[abi.kvm_cpuid_entry2]:
        nent = 256
        while True:
            buf = abi.cpuid2_type(nent)()
            buf.nent = nent
            try:
                fcntl.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf, True)
            except OSError as exc:
                if exc.errno == E.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise KvmError("KVM_GET_SUPPORTED_CPUID", exc.errno or 0, os.strerror(exc.errno or 0)) from None
            return [buf.entries[i] for i in range(buf.nent)]

    def create_vm(self) -> Vm:
        return Vm(self, _ioctl(self.fd, abi.KVM_CREATE_VM, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    """A VM fd: memory slots, in-kernel devices, interrupts, ioeventfds, vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def check_extension(self, cap: int) -> int:
        try:
            return fcntl.ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return self.kvm.check_extension(cap)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        region = abi.kvm_userspace_memory_region(slot, flags, guest_phys_addr, size, host_addr)
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_addr(self, addr: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, C.c_uint64(addr))

    def create_irqchip(self) -> None:
        _ioctl(self.fd, abi.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        _ioctl(self.fd, abi.KVM_CREATE_PIT2, abi.kvm_pit_config(flags))

    def irq_line(self, gsi: int, level: int) -> None:
        _ioctl(self.fd, abi.KVM_IRQ_LINE, abi.kvm_irq_level(gsi, level))

    def set_gsi_routing(self, entries: Sequence[abi.kvm_irq_routing_entry]) -> None:
        table = abi.irq_routing_type(len(entries))()
        table.nr = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        _ioctl(self.fd, abi.KVM_SET_GSI_ROUTING, table)

    def signal_msi(self, address: int, data: int) -> int:
        msi = abi.kvm_msi(address & 0xFFFFFFFF, address >> 32, data)
        return _ioctl(self.fd, abi.KVM_SIGNAL_MSI, msi)

    def ioeventfd(
        self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None, deassign: bool = False
    ) -> None:
        flags = abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= abi.KVM_IOEVENTFD_FLAG_DEASSIGN
        req = abi.kvm_ioeventfd(datamatch or 0, addr, length, fd, flags)
        _ioctl(self.fd, abi.KVM_IOEVENTFD, req)

    def irqfd(self, fd: int, gsi: int, *, resample_fd: int | None = None, deassign: bool = False) -> None:
        flags = abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resample_fd is not None and not deassign:
            flags |= abi.KVM_IRQFD_FLAG_RESAMPLE
        _ioctl(self.fd, abi.KVM_IRQFD, abi.kvm_irqfd(fd, gsi, flags, resample_fd or 0))

    def register_coalesced(self, addr: int, size: int, *, pio: bool = False) -> None:
        _ioctl(self.fd, abi.KVM_REGISTER_COALESCED_MMIO, abi.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    def unregister_coalesced(self, addr: int, size: int, *, pio: bool = False) -> None:
        _ioctl(self.fd, abi.KVM_UNREGISTER_COALESCED_MMIO, abi.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    def enable_cap(self, cap: int, *args: int) -> None:
        req = abi.kvm_enable_cap(cap, 0)
        for i, value in enumerate(args):
            req.args[i] = value
        _ioctl(self.fd, abi.KVM_ENABLE_CAP, req)

    def set_msr_filter(self, ranges: Sequence[tuple[int, int, int, bytes]]) -> None:
        """Install an MSR filter: (flags, base, nmsrs, bitmap) per range, everything else allowed."""
        req = abi.kvm_msr_filter(abi.KVM_MSR_FILTER_DEFAULT_ALLOW)
        keep = []  # the bitmaps must stay alive until the ioctl has copied them
        for i, (flags, base, nmsrs, bitmap) in enumerate(ranges):
            buf = C.create_string_buffer(bitmap, len(bitmap))
            keep.append(buf)
            req.ranges[i] = abi.kvm_msr_filter_range(flags, nmsrs, base, C.addressof(buf))
        _ioctl(self.fd, abi.KVM_X86_SET_MSR_FILTER, req)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        return Vcpu(self, vcpu_id, _ioctl(self.fd, abi.KVM_CREATE_VCPU, vcpu_id))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    """A vCPU fd and its shared ``kvm_run`` page (plus the coalesced ring pages after it)."""

    def __init__(self, vm: Vm, vcpu_id: int, fd: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        self.run_page = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The coalesced MMIO ring lives at page ``offset`` of the same mapping (2 on x86).
        self.coalesced_page = vm.check_extension(abi.KVM_CAP_COALESCED_MMIO)

    # KVM_RUN itself is issued by the vCPU loop with ``fcntl.ioctl(fd, abi.KVM_RUN, 0)`` directly:
    # it is the hottest call in broiler and fcntl.ioctl releases the GIL around it.

    def run(self) -> None:
        """One KVM_RUN for callers off the hot path (probes, tests); the exit is in ``run_page``."""
        _ioctl(self.fd, abi.KVM_RUN, 0)

    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        _ioctl(self.fd, abi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, regs)

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        _ioctl(self.fd, abi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs)

    def set_cpuid(self, entries: Sequence[abi.kvm_cpuid_entry2]) -> None:
        buf = abi.cpuid2_type(len(entries))()
        buf.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        _ioctl(self.fd, abi.KVM_SET_CPUID2, buf)

    def get_cpuid(self, max_entries: int = 256) -> list[abi.kvm_cpuid_entry2]:
        """The CPUID entries KVM_SET_CPUID2 gave this vCPU (KVM_GET_CPUID2)."""
        buf = abi.cpuid2_type(max_entries)()
        buf.nent = max_entries
        _ioctl(self.fd, abi.KVM_GET_CPUID2, buf)
        return [abi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_xcrs(self) -> dict[int, int]:
        """Extended control registers by number (XCR0 is 0); empty where the host has no XSAVE."""
        xcrs = abi.kvm_xcrs()
        _ioctl(self.fd, abi.KVM_GET_XCRS, xcrs)
        return {int(xcrs.xcrs[i].xcr): int(xcrs.xcrs[i].value) for i in range(min(xcrs.nr_xcrs, 16))}

    def get_lapic(self) -> abi.kvm_lapic_state:
        state = abi.kvm_lapic_state()
        _ioctl(self.fd, abi.KVM_GET_LAPIC, state)
        return state

    def set_lapic(self, state: abi.kvm_lapic_state) -> None:
        _ioctl(self.fd, abi.KVM_SET_LAPIC, state)

    def get_vcpu_events(self) -> abi.kvm_vcpu_events:
        events = abi.kvm_vcpu_events()
        _ioctl(self.fd, abi.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: abi.kvm_vcpu_events) -> None:
        _ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, events)

    def get_fpu(self) -> abi.kvm_fpu:
        fpu = abi.kvm_fpu()
        _ioctl(self.fd, abi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        _ioctl(self.fd, abi.KVM_SET_FPU, fpu)

    def set_msrs(self, msrs: dict[int, int]) -> int:
        buf = abi.msrs_type(len(msrs))()
        buf.nmsrs = len(msrs)
        for i, (index, value) in enumerate(msrs.items()):
            buf.entries[i].index = index
            buf.entries[i].data = value
        return _ioctl(self.fd, abi.KVM_SET_MSRS, buf)

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        buf = abi.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        count = _ioctl(self.fd, abi.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(count)}

    def get_mp_state(self) -> int:
        state = abi.kvm_mp_state()
        _ioctl(self.fd, abi.KVM_GET_MP_STATE, state)
        return int(state.mp_state)

    def set_mp_state(self, value: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_MP_STATE, abi.kvm_mp_state(value))

    def translate(self, linear: int) -> tuple[int, bool]:
        """(physical address, valid) for a guest-linear address under the vCPU's paging."""
        tr = abi.kvm_translation(linear)
        _ioctl(self.fd, abi.KVM_TRANSLATE, tr)
        return int(tr.physical_address), bool(tr.valid)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.run_page.close()
            except BufferError:
                pass  # views onto kvm_run still exist; the mapping goes when they do
            os.close(self.fd)
            self.fd = -1
