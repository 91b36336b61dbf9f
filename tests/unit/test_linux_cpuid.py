"""CPUID profiles over plain entries."""

from __future__ import annotations

import pytest

from broiler.boot.linux.cpuid import (
    HYPERVISOR_BIT,
    SAFE_CLEARCPUID,
    SAFE_CMDLINE,
    CpuidEntry,
    apply_profile,
    host_profile,
    linux_feature_number,
    profile_cmdline,
    safe_profile,
)
from broiler.errors import ConfigError

ALL = 0xFFFF_FFFF


def supported() -> list[CpuidEntry]:
    """Something like KVM_GET_SUPPORTED_CPUID on an Intel host, every feature bit set."""
    return [
        CpuidEntry(0, eax=0x1F, ebx=0x756E6547, ecx=0x6C65746E, edx=0x49656E69),
        CpuidEntry(1, eax=0x806EC, ebx=0xAB000800, ecx=0x7FFAFBFF, edx=0xBFEBFBFF),
        CpuidEntry(4, 0, 1, eax=0xFC004121),
        CpuidEntry(4, 1, 1, eax=0xFC004122),
        CpuidEntry(4, 4, 1, eax=0),
        CpuidEntry(6, eax=0x4, ecx=0xF),
        CpuidEntry(7, 0, 1, ebx=ALL, ecx=ALL, edx=ALL),
        CpuidEntry(0xA, eax=0x07300404),
        CpuidEntry(0xB, 0, 1, eax=1, ebx=2, ecx=0x100, edx=7),
        CpuidEntry(0xB, 1, 1, eax=4, ebx=8, ecx=0x201, edx=7),
        CpuidEntry(0xB, 2, 1, ecx=2, edx=7),
        CpuidEntry(0xD, 0, 1, eax=0x207, ebx=0x340, ecx=0xA88, edx=0),
        CpuidEntry(0x4000_0000, eax=0x4000_0001, ebx=0x4B4D564B),
        CpuidEntry(0x4000_0001, eax=0x1007EFB),  # KVM_CPUID_FEATURES as this host reports them
        CpuidEntry(0x8000_0001, ecx=ALL, edx=0x2C100800),
        CpuidEntry(0x8000_0008, eax=0x3027, ecx=0xFFFF),
    ]


def by_key(entries: list[CpuidEntry]) -> dict[tuple[int, int], CpuidEntry]:
    return {(e.function, e.index): e for e in entries}


@pytest.mark.parametrize("vcpu, ncpus", [(0, 1), (1, 2), (5, 6)])
def test_host_apic_ids_and_topology(vcpu: int, ncpus: int) -> None:
    e = by_key(host_profile(supported(), vcpu, ncpus))
    leaf1 = e[(1, 0)]
    assert leaf1.ebx >> 24 == vcpu and leaf1.ebx & 0xFFFF == 0x0800
    assert leaf1.ecx & HYPERVISOR_BIT
    assert bool(leaf1.edx & (1 << 28)) == (ncpus > 1)
    shift = (ncpus - 1).bit_length()
    assert (leaf1.ebx >> 16) & 0xFF == 1 << shift
    assert [e[(0xB, i)].edx for i in range(3)] == [vcpu] * 3
    assert (e[(0xB, 0)].eax, e[(0xB, 0)].ebx, e[(0xB, 0)].ecx) == (0, 1, 0x100)
    assert (e[(0xB, 1)].eax, e[(0xB, 1)].ebx, e[(0xB, 1)].ecx) == (shift, ncpus, 0x201)
    assert e[(0xB, 2)].ecx == 2 and e[(0xB, 2)].ebx == 0
    assert e[(4, 0)].eax >> 26 == (1 << shift) - 1 and e[(4, 0)].eax & 0x3FFF == 0x0121
    assert e[(4, 4)].eax == 0
    assert e[(0x8000_0008, 0)].ecx & 0xFF == ncpus - 1


def test_host_keeps_features_and_applies_broiler_fixes() -> None:
    e = by_key(host_profile(supported(), 0, 1))
    assert e[(1, 0)].ecx & ~HYPERVISOR_BIT == 0x7FFAFBFF
    assert e[(7, 0)].ebx == ALL and e[(0xD, 0)].eax == 0x207
    assert not e[(6, 0)].ecx & 0x8  # Broiler: leaf 6 ECX bit 3 off
    assert e[(0xA, 0)].eax == 0  # PMU version 4 is not v2: zeroed
    assert e[(0x4000_0000, 0)] == supported()[12]


def test_pmu_v2_kept() -> None:
    (e,) = host_profile([CpuidEntry(0xA, eax=0x07300402)], 0, 1)
    assert e.eax == 0x07300402


def test_safe_hides_unemulated_features() -> None:
    e = by_key(safe_profile(supported(), 0, 1))
    ecx1 = e[(1, 0)].ecx
    for bit in (13, 26, 27, 28, 23, 22, 19, 20, 25, 1, 9, 30):  # CX16 XSAVE OSXSAVE AVX POPCNT ...
        assert not ecx1 & (1 << bit), bit
    assert ecx1 & HYPERVISOR_BIT and ecx1 & 1  # SSE3 stays
    ebx7 = e[(7, 0)].ebx
    for bit in (0, 3, 5, 8, 18, 19, 20):  # FSGSBASE BMI1 AVX2 BMI2 RDSEED ADX SMAP
        assert not ebx7 & (1 << bit), bit
    assert ebx7 & (1 << 7)  # SMEP stays
    assert not e[(7, 0)].ecx & (1 << 22)  # RDPID
    assert e[(0xD, 0)] == CpuidEntry(0xD, 0, 1)
    assert not e[(0x8000_0001, 0)].ecx & (1 << 5)
    assert e[(1, 0)].ebx >> 24 == 0  # host part applied too


def test_safe_cmdline_matches_hidden_bits() -> None:
    assert SAFE_CMDLINE.startswith("clearcpuid=154,308,151,150")
    assert len(SAFE_CLEARCPUID) == 16
    assert linux_feature_number(1, 0, "ecx", 26) == 154  # XSAVE
    assert linux_feature_number(7, 0, "ebx", 20) == 308  # SMAP
    assert linux_feature_number(7, 0, "ecx", 22) == 534  # RDPID
    hidden = by_key(safe_profile(supported(), 0, 1))
    words = {4: hidden[(1, 0)].ecx, 9: hidden[(7, 0)].ebx, 16: hidden[(7, 0)].ecx}
    for n in SAFE_CLEARCPUID:  # every clearcpuid bit is hidden too
        assert not words[n // 32] & (1 << (n % 32)), n


def test_profile_dispatch() -> None:
    assert apply_profile("host", supported(), 0, 1) == host_profile(supported(), 0, 1)
    assert apply_profile("safe", supported(), 0, 1) == safe_profile(supported(), 0, 1)
    assert profile_cmdline("host") == "" and profile_cmdline("safe") == SAFE_CMDLINE
    with pytest.raises(ConfigError, match="unknown CPU profile"):
        apply_profile("fast", supported(), 0, 1)
    with pytest.raises(ConfigError):
        profile_cmdline("fast")
    with pytest.raises(ValueError):
        host_profile(supported(), 2, 2)


def test_safe_hides_the_kvm_features_that_issue_hypercalls() -> None:
    host = by_key(host_profile(supported(), 0, 2))[(0x4000_0001, 0)].eax
    safe = by_key(safe_profile(supported(), 0, 2))[(0x4000_0001, 0)].eax
    assert host == 0x1007EFB
    hidden = host & ~safe
    assert hidden == (1 << 7) | (1 << 11) | (1 << 13)  # PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD (16 absent)
    assert safe & (1 << 3) and safe & (1 << 9)  # kvm-clock and PV TLB flush stay
