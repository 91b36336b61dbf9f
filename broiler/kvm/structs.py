"""The KVM userspace ABI's structures (ctypes), transcribed from ``linux/kvm.h`` and ``asm/kvm.h`` (x86-64).

Data only; ``broiler.kvm.abi`` re-exports every name, so callers keep writing ``abi.kvm_regs``.
``tests/unit/test_kvm_abi.py`` checks every size against the host's header.
"""

from __future__ import annotations

import ctypes as C

u8, u16, u32, u64, s32 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int32
KVM_COALESCED_MMIO_MAX_BYTES = 4096  # the ring occupies one page


class kvm_userspace_memory_region(C.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64), ("userspace_addr", u64)]


class kvm_regs(C.Structure):
    _fields_ = [
        (n, u64)
        for n in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rsp",
            "rbp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
            "rflags",
        )
    ]


class kvm_segment(C.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(C.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(C.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(C.Structure):
    _fields_ = [("nent", u32), ("padding", u32)]  # followed by nent kvm_cpuid_entry2


def cpuid2_type(nent: int) -> type[C.Structure]:
    """A kvm_cpuid2 with room for ``nent`` entries (the kernel's flexible array)."""

    class kvm_cpuid2_n(C.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    return kvm_cpuid2_n


class kvm_ioeventfd(C.Structure):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32), ("pad", u8 * 36)]


class kvm_irqfd(C.Structure):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_irq_level(C.Structure):
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_msi(C.Structure):
    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    ]


class kvm_coalesced_mmio_zone(C.Structure):
    # ``pad`` is ``pio`` in kernels with KVM_CAP_COALESCED_PIO (a union in the header).
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(C.Structure):
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(C.Structure):
    _fields_ = [("first", u32), ("last", u32)]  # followed by the entries


KVM_COALESCED_MMIO_MAX = (KVM_COALESCED_MMIO_MAX_BYTES - C.sizeof(kvm_coalesced_mmio_ring)) // C.sizeof(
    kvm_coalesced_mmio
)


class kvm_pit_config(C.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_irq_routing_irqchip(C.Structure):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(C.Structure):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _routing_union(C.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(C.Structure):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _routing_union)]


class kvm_irq_routing(C.Structure):
    _fields_ = [("nr", u32), ("flags", u32)]  # followed by nr entries


def irq_routing_type(nr: int) -> type[C.Structure]:
    class kvm_irq_routing_n(C.Structure):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", kvm_irq_routing_entry * nr)]

    return kvm_irq_routing_n


class kvm_lapic_state(C.Structure):
    _fields_ = [("regs", C.c_char * 1024)]


class _events_exception(C.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _events_interrupt(C.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(C.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(C.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_xcr(C.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(C.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * 16), ("padding", u64 * 16)]


class kvm_vcpu_events(C.Structure):
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _events_smi),
        ("triple_fault_pending", u8),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_fpu(C.Structure):
    _fields_ = [
        ("fpr", u8 * 128),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", u8 * 256),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(C.Structure):
    _fields_ = [("nmsrs", u32), ("pad", u32)]  # followed by nmsrs entries


def msrs_type(n: int) -> type[C.Structure]:
    class kvm_msrs_n(C.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]

    return kvm_msrs_n


KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter_range(C.Structure):
    # bitmap: one bit per MSR from ``base``; a 1 allows the operations in ``flags``, a 0 denies them.
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", C.c_void_p)]


class kvm_msr_filter(C.Structure):
    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


class kvm_translation(C.Structure):
    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


class kvm_mp_state(C.Structure):
    _fields_ = [("mp_state", u32)]


class kvm_enable_cap(C.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


# -- state save/restore (snapshots, docs/snapshot.md) -----------------------------------------------
# The snapshot keeps these as opaque bytes, so only the fields broiler reads are spelled out.


class kvm_xsave(C.Structure):
    _fields_ = [("region", u32 * 1024)]  # KVM_GET_XSAVE2 may return more: see kvm/state.py


class kvm_debugregs(C.Structure):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_irqchip(C.Structure):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", u8 * 512)]  # pic or ioapic state


class kvm_pit_state2(C.Structure):
    _fields_ = [("channels", u8 * 72), ("flags", u32), ("reserved", u32 * 9)]


class kvm_clock_data(C.Structure):
    _fields_ = [
        ("clock", u64),
        ("flags", u32),
        ("pad0", u32),
        ("realtime", u64),
        ("host_tsc", u64),
        ("pad", u32 * 4),
    ]
