"""S3, suspend to RAM, and the resume through the FACS waking vector -- as QEMU with SeaBIOS does it.

The guest writes SLP_TYP 1 | SLP_EN to PM1a_CNT (devices/legacy/acpi_pm.py). QEMU stops the writing vCPU at
once and the others soon after, keeps RAM, and on a wake event resets the machine; SeaBIOS finds the resume
flag and jumps to the waking vector in real mode. broiler does the same without firmware:

1. suspend: the writing vCPU is told to park before it runs another instruction (its OUT completes:
   immediate_exit), then a thread of our own parks the rest and holds the event loop (core/pause.py) with the
   run state "suspended" (`broiler stat`, `broiler list`). `broiler resume` does not end it.
2. wake: the CMOS RTC alarm, if the guest set AIE (and RTC_EN, once it wrote PM1a_EN; QEMU always wants
   RTC_EN, so kvm-unit-tests-style kernels that never write PM1a_EN wake here and sleep on there), or
   `broiler wakeup NAME` (QEMU's system_wakeup). A guest that armed nothing sleeps until that command or
   --timeout, as under QEMU: no guess at a default wake time, so a test that forgets its alarm fails loudly.
3. resume: RAM as it was; every vCPU reset -- the BSP enters the waking vector (boot/wake.py: real mode
   CS:IP = vector >> 4 : vector & 0xF, or 32-bit protected mode at X_Firmware_Waking_Vector), the APs wait
   for INIT/SIPI -- with its local APIC as the machine made it; PM1 reset with WAK_STS (and RTC_STS) set;
   the RTC's interrupt enables and flags reset (time and alarm kept). Then the event loop and the vCPUs
   run again.

The HPET is put back as it was made (halted, nothing armed; a line it held high stays high); the in-kernel
PICs, IOAPIC and PIT go back to their state at creation (KVM_SET_IRQCHIP/PIT2). Not reset (a real platform
reset would): the PCI devices. Power-off (S5) and the reset paths are unchanged.

Under --record the PM1, RTC and HPET resets are one recorded cause, the wake, with its reason (vmm/wake_reset.py),
so replay applies them at the same point; the sleep request is an effect of the PM1a_CNT write that asked.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from .. import exitcodes
from ..boot.acpi import FACS_ADDR
from ..boot.entry import EntryState, real_mode_state
from ..boot.wake import FACS_SIZE, resume_entry
from ..core.bus import Device
from ..core.memory import GuestMemory
from ..core.observe import Observer
from ..core.pause import PARK_TIMEOUT, VmPause
from ..core.vcpu import VcpuThread
from ..devices.legacy.acpi_pm import AcpiPm
from ..devices.legacy.cmos import Cmos
from ..kvm import Vcpu, Vm, abi
from ..kvm.state import get_irqchip, get_pit2, set_irqchip, set_pit2
from .config import MachineConfig
from .wake_reset import WakeReset

POLL = 0.25  # seconds between looks at "is the VM ending?" while suspended
AP_RESET = real_mode_state(0xF000, 0xFFF0)  # an AP's state after INIT; the SIPI sets CS:IP


class SleepHost(Protocol):
    """What S3 needs of the machine (vmm/machine.py); a protocol, so this module never imports it."""

    pause_control: VmPause
    memory: GuestMemory
    stopping: bool
    rtc: Cmos | None
    acpi_pm: AcpiPm | None
    observer: Observer | None  # --record: the wake is a cause it writes down (vmm/wake_reset.py)

    @property
    def config(self) -> MachineConfig: ...

    @property
    def threads(self) -> Sequence[VcpuThread]: ...

    @property
    def devices(self) -> Sequence[Device]: ...

    @property
    def vm(self) -> Vm: ...

    def enter(self, vcpu: Vcpu, state: EntryState) -> None: ...

    def request_exit(self, status: int, reason: str) -> None: ...


class SleepControl:
    def __init__(self, machine: SleepHost) -> None:
        """Made once the machine's CPUs are set up: each local APIC as it is then is what resume restores
        (none without the in-kernel irqchip)."""
        self._machine = machine
        self._pause = machine.pause_control
        self._threads = machine.threads
        self.rtc, self.pm = machine.rtc, machine.acpi_pm
        self._lapics = [t.vcpu.get_lapic() for t in self._threads] if machine.config.irqchip else None
        # The in-kernel PICs, IOAPIC and PIT as they were made: a wake resets them as a platform reset does
        # (QEMU resets every device on an S3 wake; firmware and the OS program them again).
        self._chips: list[bytes] = []
        if machine.config.irqchip:
            vm = machine.vm
            chips = (abi.KVM_IRQCHIP_PIC_MASTER, abi.KVM_IRQCHIP_PIC_SLAVE, abi.KVM_IRQCHIP_IOAPIC)
            self._chips = [get_irqchip(vm, chip) for chip in chips] + [get_pit2(vm)]
        # PM1, the RTC and the HPET: what a wake resets, shared with replay (a recorded cause there).
        self.devices = WakeReset(machine.acpi_pm, machine.rtc, machine.devices)
        self._wakeup = threading.Event()
        self._sleeper: threading.Thread | None = None
        self.suspends = 0
        self.last_wake = ""  # "rtc" or "command": what ended the last sleep

    def request_suspend(self) -> None:
        """Called on the vCPU thread that wrote SLP_EN. That vCPU parks before its next instruction; the
        rest is done on another thread (a vCPU cannot wait for itself to park)."""
        if self._sleeper is not None and self._sleeper.is_alive():
            return  # another vCPU asked too: one sleep
        me = threading.get_ident()
        for t in self._threads:
            if t.thread.ident == me:
                t.pause()
        self._wakeup.clear()
        self._sleeper = threading.Thread(target=self._sleep, name="broiler-s3", daemon=True)
        self._sleeper.start()

    def wakeup(self) -> bool:
        """`broiler wakeup`: end the sleep; False if the VM is not suspended."""
        if not self._pause.state.suspended:
            return False
        self._wakeup.set()
        return True

    def _sleep(self) -> None:
        try:
            if not self._pause.pause(suspend=True):
                return  # `broiler pause` got there first: the VM stays paused as the user asked
            self.suspends += 1
            by_rtc = self._wait_for_wake()
            if by_rtc is None:
                return  # the VM is ending
            self.last_wake = "rtc" if by_rtc else "command"
            self._reset(by_rtc=by_rtc)
            self._pause.resume(wake=True)
        except Exception:
            sys.stderr.write(f"broiler: internal error in S3 resume:\n{traceback.format_exc()}")
            self._machine.request_exit(exitcodes.INTERNAL, "internal error in S3 resume")

    def _alarm_in(self) -> float | None:
        if self.rtc is None or (self.pm is not None and not self.pm.rtc_wake_enabled):
            return None
        return self.rtc.seconds_to_alarm(time.time())

    def _wait_for_wake(self) -> bool | None:
        """True when the RTC alarm woke the VM, False for `broiler wakeup`, None when the VM is ending."""
        delay = self._alarm_in()
        deadline = None if delay is None else time.monotonic() + delay
        while not self._machine.stopping:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return True
            if self._wakeup.wait(POLL if remaining is None else min(remaining, POLL)):
                return False
        return None

    def _reset(self, *, by_rtc: bool) -> None:
        entry = resume_entry(self._machine.memory.read(FACS_ADDR, FACS_SIZE))
        for t in self._threads:
            if not t.call_on_vcpu(partial(self._reset_vcpu, t.vcpu, entry), timeout=PARK_TIMEOUT):
                raise TimeoutError(f"vCPU {t.vcpu.id} did not take its reset within {PARK_TIMEOUT:g} s")
        self.devices.wake(by_rtc=by_rtc, observer=self._machine.observer)
        if self._chips:
            *chips, pit = self._chips
            for chip in chips:
                set_irqchip(self._machine.vm, chip)
            set_pit2(self._machine.vm, pit)

    def _reset_vcpu(self, vcpu: Vcpu, entry: EntryState) -> None:
        """On the vCPU's own (parked) thread: the BSP to the waking vector, an AP to wait-for-SIPI."""
        bsp = vcpu.id == 0
        self._machine.enter(vcpu, entry if bsp else AP_RESET)
        if self._lapics is not None:
            vcpu.set_lapic(self._lapics[vcpu.id])
            vcpu.set_mp_state(abi.KVM_MP_STATE_RUNNABLE if bsp else abi.KVM_MP_STATE_INIT_RECEIVED)
