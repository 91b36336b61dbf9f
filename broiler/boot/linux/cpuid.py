"""CPUID profiles: what KVM_SET_CPUID2 gets for each vCPU, as pure functions over plain entries.

- ``host``: KVM_GET_SUPPORTED_CPUID as is, plus what a VMM must fill in itself: the hypervisor bit,
  the vCPU's APIC ID (leaf 1 EBX[31:24]; x2APIC ID in leaves 0xB/0x1F EDX), a topology of
  ``ncpus`` cores in one package (leaves 1, 4, 0xB, 0x1F, 0x80000008), and Broiler's two fixes
  (leaf 6 ECX bit 3 off; leaf 0xA zeroed unless it describes a usable v2 PMU).
- ``safe``: ``host`` minus the features whose instructions this host's KVM emulator cannot run
  (CX16, XSAVE and everything AVX, POPCNT, MOVBE, SMAP, ...). On KVM-PVM the guest's CPUID still
  shows the host's bits for most of them whatever KVM_SET_CPUID2 says (only CX16 is really hidden),
  so the kernel command line must also carry ``clearcpuid=`` (SAFE_CMDLINE), see host-kvm.md.

clearcpuid numbers are Linux's cpufeature bit numbers, word * 32 + bit: word 4 is CPUID 1 ECX,
word 9 is CPUID 7.0 EBX, word 16 is CPUID 7.0 ECX.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from ...errors import ConfigError

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # (sic) the kernel's spelling
PROFILES = ("host", "safe")

HYPERVISOR_BIT = 1 << 31  # leaf 1 ECX
HTT_BIT = 1 << 28  # leaf 1 EDX


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


def _bits(*n: int) -> int:
    return sum(1 << b for b in n)


# Leaf 1 ECX: PCLMULQDQ 1, SSSE3 9, FMA 12, CX16 13, SSE4.1 19, SSE4.2 20, MOVBE 22, POPCNT 23,
# AES 25, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29, RDRAND 30.
SAFE_CLEAR_1_ECX = _bits(1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30)
# Leaf 7.0 EBX: FSGSBASE 0, BMI1 3, HLE 4, AVX2 5, BMI2 8, RTM 11, AVX512F 16, AVX512DQ 17,
# RDSEED 18, ADX 19, SMAP 20, AVX512_IFMA 21, AVX512PF 26, AVX512ER 27, AVX512CD 28, SHA 29,
# AVX512BW 30, AVX512VL 31.
SAFE_CLEAR_7_EBX = _bits(0, 3, 4, 5, 8, 11, 16, 17, 18, 19, 20, 21, 26, 27, 28, 29, 30, 31)
# Leaf 7.0 ECX: AVX512_VBMI 1, PKU 3, OSPKE 4, AVX512_VBMI2 6, GFNI 8, VAES 9, VPCLMULQDQ 10,
# AVX512_VNNI 11, AVX512_BITALG 12, AVX512_VPOPCNTDQ 14, RDPID 22.
SAFE_CLEAR_7_ECX = _bits(1, 3, 4, 6, 8, 9, 10, 11, 12, 14, 22)
# Leaf 0x80000001 ECX: ABM/LZCNT 5 (AMD's POPCNT flag), SSE4A 6, XOP 11, FMA4 16, TBM 21.
SAFE_CLEAR_EXT1_ECX = _bits(5, 6, 11, 16, 21)

# Leaf 0x40000001 EAX (KVM_CPUID_FEATURES): the features that make the guest issue hypercalls —
# PV_UNHALT 7 (PV spinlocks kick with KVM_HC_KICK_CPU), PV_SEND_IPI 11, PV_SCHED_YIELD 13,
# HC_MAP_GPA_RANGE 16. On KVM-PVM a CPL0 `vmcall` never completes: two -c 2 boots stalled with a vCPU
# forever at the `vmcall` of KVM_HC_SEND_IPI (RAX 10) and of KVM_HC_KICK_CPU (RAX 5) (docs/linux.md §8).
# Without them Linux uses the in-kernel local APIC for IPIs and plain spinlocks.
SAFE_CLEAR_KVM_FEATURES_EAX = _bits(7, 11, 13, 16)
KVM_CPUID_FEATURES = 0x4000_0001

# The measured set (host-kvm.md): XSAVE, SMAP, POPCNT, MOVBE, RDRAND, RDSEED, FSGSBASE, BMI1, BMI2,
# SSE4.1, SSE4.2, AES, PCLMULQDQ, SSSE3, ADX, RDPID. XSAVE, SMAP and POPCNT were each found by
# booting into them; the others were cleared ahead of time.
SAFE_CLEARCPUID = (154, 308, 151, 150, 158, 306, 288, 291, 296, 147, 148, 153, 129, 137, 307, 534)
SAFE_CMDLINE = "clearcpuid=" + ",".join(str(n) for n in SAFE_CLEARCPUID)


def linux_feature_number(leaf: int, subleaf: int, reg: str, bit: int) -> int:
    """Linux's cpufeature number for a CPUID bit (only the words the safe profile uses)."""
    words = {(1, 0, "edx"): 0, (1, 0, "ecx"): 4, (7, 0, "ebx"): 9, (7, 0, "ecx"): 16, (7, 0, "edx"): 18}
    return words[(leaf, subleaf, reg)] * 32 + bit


def _topology_shift(ncpus: int) -> int:
    """Bits of the APIC ID that number the cores: ceil(log2(ncpus))."""
    return max(0, (ncpus - 1).bit_length())


def _host_entry(e: CpuidEntry, apic_id: int, ncpus: int) -> CpuidEntry:
    shift = _topology_shift(ncpus)
    fn = e.function
    if fn == 1:
        ebx = (e.ebx & 0x0000_FFFF) | (apic_id << 24) | ((1 << shift) << 16)
        edx = (e.edx | HTT_BIT) if ncpus > 1 else (e.edx & ~HTT_BIT)
        return replace(e, ebx=ebx, ecx=e.ecx | HYPERVISOR_BIT, edx=edx)
    if fn == 4:
        # EAX[31:26] = cores per package - 1; EAX[25:14] = logical CPUs sharing this cache - 1 (none).
        return replace(e, eax=(e.eax & 0x3FFF) | (((1 << shift) - 1) << 26)) if e.eax & 0x1F else e
    if fn == 6:
        return replace(e, ecx=e.ecx & ~(1 << 3))
    if fn == 0xA:
        version, counters = e.eax & 0xFF, (e.eax >> 8) & 0xFF
        if e.eax and (version != 2 or counters == 0):
            return replace(e, eax=0)
        return e
    if fn in (0xB, 0x1F):
        if e.index == 0:  # SMT level: one thread per core
            return replace(e, eax=0, ebx=1, ecx=(1 << 8) | 0, edx=apic_id)
        if e.index == 1:  # core level: ncpus cores per package
            return replace(e, eax=shift, ebx=ncpus, ecx=(2 << 8) | 1, edx=apic_id)
        return replace(e, eax=0, ebx=0, ecx=e.index & 0xFF, edx=apic_id)
    if fn == 0x8000_0008:
        return replace(e, ecx=(e.ecx & ~0xF0FF) | (shift << 12) | (ncpus - 1))
    return e


def host_profile(supported: Iterable[CpuidEntry], vcpu_id: int, ncpus: int) -> list[CpuidEntry]:
    """The supported CPUID with per-vCPU APIC IDs and a consistent topology. APIC ID = vCPU id."""
    if not 0 <= vcpu_id < ncpus:
        raise ValueError(f"vCPU {vcpu_id} of {ncpus}")
    return [_host_entry(e, vcpu_id, ncpus) for e in supported]


def _safe_entry(e: CpuidEntry) -> CpuidEntry:
    fn, idx = e.function, e.index
    if fn == 1:
        return replace(e, ecx=e.ecx & ~SAFE_CLEAR_1_ECX)
    if fn == 7 and idx == 0:
        return replace(e, ebx=e.ebx & ~SAFE_CLEAR_7_EBX, ecx=e.ecx & ~SAFE_CLEAR_7_ECX)
    if fn == 0xD:  # XSAVE is hidden, so its state enumeration goes too
        return replace(e, eax=0, ebx=0, ecx=0, edx=0)
    if fn == 0x8000_0001:
        return replace(e, ecx=e.ecx & ~SAFE_CLEAR_EXT1_ECX)
    if fn == KVM_CPUID_FEATURES:
        return replace(e, eax=e.eax & ~SAFE_CLEAR_KVM_FEATURES_EAX)
    return e


def safe_profile(supported: Iterable[CpuidEntry], vcpu_id: int, ncpus: int) -> list[CpuidEntry]:
    return [_safe_entry(e) for e in host_profile(supported, vcpu_id, ncpus)]


def apply_profile(name: str, supported: Iterable[CpuidEntry], vcpu_id: int, ncpus: int) -> list[CpuidEntry]:
    if name == "host":
        return host_profile(supported, vcpu_id, ncpus)
    if name == "safe":
        return safe_profile(supported, vcpu_id, ncpus)
    raise ConfigError(f"unknown CPU profile {name!r} (use one of {', '.join(PROFILES)})")


def profile_cmdline(name: str) -> str:
    """Kernel command-line words a profile needs ('' for host)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown CPU profile {name!r} (use one of {', '.join(PROFILES)})")
    return SAFE_CMDLINE if name == "safe" else ""
