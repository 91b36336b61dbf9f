"""The KVM userspace ABI: constants, ioctl numbers and ctypes structures.

Transcribed from ``linux/kvm.h`` (and ``asm/kvm.h`` for x86-64). This module holds data only: no
logic beyond the ``_IO*`` number encoders. ``tests/unit/test_kvm_abi.py`` compiles a C program
against the host's header and checks every number and struct size below.
"""

from __future__ import annotations

import ctypes as C

from .structs import KVM_COALESCED_MMIO_MAX as KVM_COALESCED_MMIO_MAX
from .structs import KVM_COALESCED_MMIO_MAX_BYTES as KVM_COALESCED_MMIO_MAX_BYTES
from .structs import KVM_MSR_EXIT_REASON_FILTER as KVM_MSR_EXIT_REASON_FILTER
from .structs import KVM_MSR_EXIT_REASON_INVAL as KVM_MSR_EXIT_REASON_INVAL
from .structs import KVM_MSR_EXIT_REASON_UNKNOWN as KVM_MSR_EXIT_REASON_UNKNOWN
from .structs import KVM_MSR_FILTER_DEFAULT_ALLOW as KVM_MSR_FILTER_DEFAULT_ALLOW
from .structs import KVM_MSR_FILTER_MAX_RANGES as KVM_MSR_FILTER_MAX_RANGES
from .structs import KVM_MSR_FILTER_READ as KVM_MSR_FILTER_READ
from .structs import KVM_MSR_FILTER_WRITE as KVM_MSR_FILTER_WRITE
from .structs import KVM_NR_INTERRUPTS as KVM_NR_INTERRUPTS
from .structs import cpuid2_type as cpuid2_type
from .structs import irq_routing_type as irq_routing_type
from .structs import kvm_clock_data as kvm_clock_data
from .structs import kvm_coalesced_mmio as kvm_coalesced_mmio
from .structs import kvm_coalesced_mmio_ring as kvm_coalesced_mmio_ring
from .structs import kvm_coalesced_mmio_zone as kvm_coalesced_mmio_zone
from .structs import kvm_cpuid2 as kvm_cpuid2
from .structs import kvm_cpuid_entry2 as kvm_cpuid_entry2
from .structs import kvm_debugregs as kvm_debugregs
from .structs import kvm_dtable as kvm_dtable
from .structs import kvm_enable_cap as kvm_enable_cap
from .structs import kvm_fpu as kvm_fpu
from .structs import kvm_ioeventfd as kvm_ioeventfd
from .structs import kvm_irq_level as kvm_irq_level
from .structs import kvm_irq_routing as kvm_irq_routing
from .structs import kvm_irq_routing_entry as kvm_irq_routing_entry
from .structs import kvm_irq_routing_irqchip as kvm_irq_routing_irqchip
from .structs import kvm_irq_routing_msi as kvm_irq_routing_msi
from .structs import kvm_irqchip as kvm_irqchip
from .structs import kvm_irqfd as kvm_irqfd
from .structs import kvm_lapic_state as kvm_lapic_state
from .structs import kvm_mp_state as kvm_mp_state
from .structs import kvm_msi as kvm_msi
from .structs import kvm_msr_entry as kvm_msr_entry
from .structs import kvm_msr_filter as kvm_msr_filter
from .structs import kvm_msr_filter_range as kvm_msr_filter_range
from .structs import kvm_msrs as kvm_msrs
from .structs import kvm_pit_config as kvm_pit_config
from .structs import kvm_pit_state2 as kvm_pit_state2
from .structs import kvm_regs as kvm_regs
from .structs import kvm_segment as kvm_segment
from .structs import kvm_sregs as kvm_sregs
from .structs import kvm_translation as kvm_translation

# The structures live in structs.py; each name is re-exported so callers keep writing abi.<name>.
from .structs import kvm_userspace_memory_region as kvm_userspace_memory_region
from .structs import kvm_vcpu_events as kvm_vcpu_events
from .structs import kvm_xcr as kvm_xcr
from .structs import kvm_xcrs as kvm_xcrs
from .structs import kvm_xsave as kvm_xsave
from .structs import msrs_type as msrs_type

# -- ioctl number encoding (asm-generic/ioctl.h) -------------------------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: type | int) -> int:
    return _ioc(_IOC_READ, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _iow(nr: int, struct: type | int) -> int:
    return _ioc(_IOC_WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _iowr(nr: int, struct: type | int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


u8, u16, u32, u64, s32 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int32

KVM_API_VERSION = 12

# -- exit reasons ----------------------------------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30

EXIT_REASON_NAMES = {
    value: name[len("KVM_EXIT_") :]
    for name, value in list(globals().items())
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# -- capabilities ----------------------------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_XSAVE2 = 208

# -- flags -----------------------------------------------------------------------------------------
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_PIT_SPEAKER_DUMMY = 1
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
KVM_VCPUEVENT_VALID_SHADOW = 0x4
KVM_VCPUEVENT_VALID_SMM = 0x8
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20


# -- struct kvm_run: the fields broiler reads, by byte offset ------------------------------------
# The vCPU loop reads kvm_run through preallocated views at these offsets rather than through a
# ctypes Structure, because attribute access on a Structure costs more than the exit it decodes.
RUN_REQUEST_INTERRUPT_WINDOW = 0  # u8
RUN_IMMEDIATE_EXIT = 1  # u8
RUN_EXIT_REASON = 8  # u32
RUN_IF_FLAG = 13  # u8
RUN_UNION = 32  # start of the exit-specific union
RUN_IO_DIRECTION = 32  # u8
RUN_IO_SIZE = 33  # u8
RUN_IO_PORT = 34  # u16
RUN_IO_COUNT = 36  # u32
RUN_IO_DATA_OFFSET = 40  # u64
RUN_MMIO_PHYS_ADDR = 32  # u64
RUN_MMIO_DATA = 40  # u8[8]
RUN_MMIO_LEN = 48  # u32
RUN_MMIO_IS_WRITE = 52  # u8
RUN_FAIL_ENTRY_REASON = 32  # u64
RUN_INTERNAL_SUBERROR = 32  # u32
RUN_INTERNAL_NDATA = 36  # u32
RUN_INTERNAL_DATA = 40  # u64[16]
RUN_SYSTEM_EVENT_TYPE = 32  # u32
RUN_MSR_ERROR = 32  # u8 (kvm_run.msr; user -> kernel: 1 = inject #GP)
RUN_MSR_REASON = 40  # u32 (KVM_MSR_EXIT_REASON_*)
RUN_MSR_INDEX = 44  # u32
RUN_MSR_DATA = 48  # u64
RUN_SIZE = 2352

# -- ioctls ----------------------------------------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, 4)  # struct kvm_msr_list {u32 nmsrs; u32 indices[]}
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, u64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, kvm_coalesced_mmio_zone)
KVM_IRQ_LINE_STATUS = _iowr(0x67, kvm_irq_level)
KVM_SET_GSI_ROUTING = _iow(0x6A, kvm_irq_routing)
KVM_IRQFD = _iow(0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, kvm_ioeventfd)
KVM_SIGNAL_MSI = _iow(0xA5, kvm_msi)
KVM_ENABLE_CAP = _iow(0xA3, kvm_enable_cap)
KVM_X86_SET_MSR_FILTER = _iow(0xC6, kvm_msr_filter)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, kvm_translation)
KVM_GET_MSRS = _iowr(0x88, kvm_msrs)
KVM_SET_MSRS = _iow(0x89, kvm_msrs)
KVM_GET_FPU = _ior(0x8C, kvm_fpu)
KVM_SET_FPU = _iow(0x8D, kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
KVM_GET_XCRS = _ior(0xA6, kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, kvm_xcrs)
KVM_GET_XSAVE = _ior(0xA4, kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, kvm_xsave)
KVM_GET_XSAVE2 = _ior(0xCF, kvm_xsave)
KVM_GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
KVM_GET_IRQCHIP = _iowr(0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, kvm_irqchip)  # _IOR in linux/kvm.h, a historical slip kept for the ABI
KVM_GET_PIT2 = _ior(0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, kvm_pit_state2)
KVM_GET_CLOCK = _ior(0x7C, kvm_clock_data)
KVM_SET_CLOCK = _iow(0x7B, kvm_clock_data)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_SET_TSC_KHZ = _io(0xA2)

IOCTL_NAMES = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_") and isinstance(value, int) and value > 0xFFFF
}


def buffer_address(buffer: object) -> int:
    """Host virtual address of a writable buffer (an mmap or bytearray)."""
    return C.addressof(C.c_char.from_buffer(buffer))  # type: ignore[arg-type]
