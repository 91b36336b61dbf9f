"""Issue 17, S3 without KVM: the PM1a control block's sleep types, the RTC's update-in-progress bit, alarm
and reset, the FACS waking vectors, the DSDT's \\_S3 package and the "suspended" run state."""

from __future__ import annotations

import time

import pytest

from broiler.boot.acpi import FACS_ADDR, build_acpi
from broiler.boot.firmware import cpus
from broiler.boot.wake import resume_entry
from broiler.core.eventloop import EventLoop
from broiler.core.pause import VmPause
from broiler.devices.legacy.acpi_pm import S3_SLP_TYP, SLP_EN, AcpiPm
from broiler.devices.legacy.cmos import REG_A, REG_B, REG_C, Cmos


class Pm:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.device = AcpiPm(lambda: self.calls.append("off"), lambda: self.calls.append("s3"))


def test_slp_typ_1_suspends_5_powers_off_and_others_do_nothing() -> None:
    pm = Pm()
    pm.device.write(4, 2, S3_SLP_TYP << 10 | SLP_EN)  # kvm-unit-tests' s3 writes 0x2400 literally
    assert pm.calls == ["s3"] and S3_SLP_TYP << 10 | SLP_EN == 0x2400
    assert pm.device.read(4, 2) == S3_SLP_TYP << 10  # SLP_EN is write-only
    pm.device.write(4, 2, S3_SLP_TYP << 10)  # no SLP_EN: nothing
    pm.device.write(4, 2, 3 << 10 | SLP_EN)  # a type no \_Sx names: stored, ignored
    assert pm.calls == ["s3"]
    pm.device.write(4, 2, 5 << 10 | SLP_EN)
    assert pm.calls == ["s3", "off"]


def test_rtc_wake_is_allowed_until_pm1_en_is_written_then_follows_rtc_en() -> None:
    pm = AcpiPm(lambda: None)
    assert pm.rtc_wake_enabled  # kvm-unit-tests' s3 never writes PM1a_EN
    pm.write(2, 2, 0)
    assert not pm.rtc_wake_enabled
    pm.write(2, 2, 1 << 10)
    assert pm.rtc_wake_enabled


def test_wake_resets_the_block_and_sets_wak_sts_and_rtc_sts() -> None:
    pm = AcpiPm(lambda: None)
    pm.write(2, 2, 1 << 10)
    pm.reset()
    pm.woke(by_rtc=True)
    assert pm.read(0, 2) == 0x8400 and pm.read(2, 2) == 0 and pm.read(4, 2) == 0
    pm.write(0, 2, 0x8000)  # write-1-to-clear
    assert pm.read(0, 2) == 0x0400
    pm.reset()
    pm.woke(by_rtc=False)
    assert pm.read(0, 2) == 0x8000


def _cmos(now: float) -> Cmos:
    """An RTC whose UTC clock and device clock both stand at ``now`` seconds."""
    return Cmos(clock=lambda: time.gmtime(int(now)), phase_ns=lambda: round(now * 1e9))


def _rtc_read(rtc: Cmos, reg: int) -> int:
    rtc.write(0, 1, reg)
    return rtc.read(1, 1)


def _rtc_write(rtc: Cmos, reg: int, value: int) -> None:
    rtc.write(0, 1, reg)
    rtc.write(1, 1, value)


def test_uip_is_set_in_the_last_2_ms_of_each_device_clock_second_and_never_writable() -> None:
    assert _rtc_read(_cmos(1000.999), REG_A) & 0x80
    assert not _rtc_read(_cmos(1000.5), REG_A) & 0x80
    held = _cmos(1000.999)
    _rtc_write(held, REG_B, 0x82)  # SET: updates stopped, so none in progress
    assert not _rtc_read(held, REG_A) & 0x80
    idle = _cmos(1000.5)
    _rtc_write(idle, REG_A, 0xA6)
    assert _rtc_read(idle, REG_A) == 0x26


def test_seconds_to_alarm_matches_the_fields_that_care() -> None:
    midnight_plus_3 = 86400 * 20000 + 3.25  # 00:00:03.25 UTC
    rtc = _cmos(midnight_plus_3)
    for reg, value in ((1, 0x05), (3, 0xC0), (5, 0xFF)):  # second 5 (BCD), any minute, any hour
        _rtc_write(rtc, reg, value)
    assert rtc.seconds_to_alarm(midnight_plus_3) is None  # AIE clear: no alarm
    _rtc_write(rtc, REG_B, 0x22)
    assert rtc.seconds_to_alarm(midnight_plus_3) == pytest.approx(1.75)
    _rtc_write(rtc, 1, 0x03)  # second 3 again: the next minute
    assert rtc.seconds_to_alarm(midnight_plus_3) == pytest.approx(59.75)
    _rtc_write(rtc, 1, 0xC0)  # every second
    assert rtc.seconds_to_alarm(midnight_plus_3) == pytest.approx(0.75)
    _rtc_write(rtc, 5, 0x25)  # hour 25 never comes
    assert rtc.seconds_to_alarm(midnight_plus_3) is None
    _rtc_write(rtc, REG_B, 0x26)  # binary mode: hour 0x25 = 37, still never; 1 = 01:00:00
    _rtc_write(rtc, 5, 1)
    assert rtc.seconds_to_alarm(midnight_plus_3) == pytest.approx(3600 - 3.25)


def test_reset_clears_the_interrupt_enables_and_flags_and_keeps_the_rest() -> None:
    rtc = _cmos(1000.5)
    _rtc_write(rtc, REG_B, 0x7A)  # PIE AIE UIE SQWE + 24h
    _rtc_write(rtc, 1, 0x30)
    rtc.nvram[REG_C] = 0xA0
    rtc.reset()
    assert _rtc_read(rtc, REG_B) == 0x02 and _rtc_read(rtc, REG_C) == 0 and _rtc_read(rtc, 1) == 0x30


def test_register_c_is_read_to_clear() -> None:
    rtc = _cmos(1000.5)
    rtc.nvram[REG_C] = 0xA0
    assert _rtc_read(rtc, REG_C) == 0xA0 and _rtc_read(rtc, REG_C) == 0


def _facs(vector: int = 0, x_vector: int = 0) -> bytes:
    facs = bytearray(64)
    facs[12:16] = vector.to_bytes(4, "little")
    facs[24:32] = x_vector.to_bytes(8, "little")
    return bytes(facs)


def test_the_real_mode_vector_gives_cs_vector_shr_4_and_ip_vector_and_0xf() -> None:
    entry = resume_entry(_facs(0x12345))
    assert entry.mode == "real16" and entry.rip == 5
    assert entry.cs.selector == 0x1234 and entry.cs.base == 0x12340 and entry.cs.limit == 0xFFFF
    assert entry.cs.db == 0 and entry.cr0 == 0x6000_0010 and entry.efer == 0 and entry.idt == (0, 0x3FF)
    assert entry.data.selector == 0 and entry.data.base == 0
    assert resume_entry(bytes(64)).rip == 0 and resume_entry(bytes(64)).cs.base == 0


def test_a_non_zero_x_vector_below_4g_wins_in_32_bit_protected_mode() -> None:
    entry = resume_entry(_facs(0x8000, 0x20_0000))
    assert entry.mode == "protected32" and entry.rip == 0x20_0000 and entry.cr0 & 1 and entry.cs.db == 1
    assert resume_entry(_facs(0x8000, 1 << 32)).mode == "real16"  # unreachable: the real-mode vector


def test_the_dsdt_names_s3_with_slp_typ_1_and_the_facs_sits_where_resume_reads_it() -> None:
    tables = build_acpi(cpus(1), [], 0xF1000)
    dsdt = tables.blob[tables.addresses["DSDT"] - 0xF1000 :]
    at = dsdt.index(b"_S3_")
    assert dsdt[at + 4] == 0x12 and dsdt[at + 7] == 0x01  # Package, PkgLength, NumElements, OneOp
    assert b"_S5_" in dsdt
    assert tables.addresses["FACS"] == FACS_ADDR


def test_a_suspended_vm_is_shown_as_such_and_only_the_wake_resumes_it(loop: EventLoop) -> None:
    pause = VmPause([], loop)
    assert pause.pause(suspend=True) is True and pause.state.name == "suspended"
    assert pause.pause() is False and pause.resume() is False  # `broiler pause/resume`: no change
    assert pause.state.name == "suspended" and pause.pauses == 0
    assert pause.resume(wake=True) is True and pause.state.name == "running"
    assert pause.resume(wake=True) is False
    assert pause.pause() is True and pause.resume(wake=True) is False and pause.resume() is True
