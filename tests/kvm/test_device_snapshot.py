"""The device side of a snapshot on real machines (issue 18): a Machine with the demo devices, --testdev and
virtio-rng has its devices poked into a non-trivial state (a moved BAR, MSI-X on, an async completion in
flight), saved, put through the file's JSON, and restored into a second Machine built from the same
configuration. The devices read back the same there, the moved BAR's doorbell is a live ioeventfd at its
new address, and the completion that was pending finishes after the restore. Devices are driven directly,
no guest runs: this checks every device's state round-trips and the MSI-X side, which the guest test across
processes (test_snapshot_guest.py: a pending completion, a moved memory BAR with INTx) does not."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from broiler.core.memory import MiB
from broiler.devices.demo.async_demo import ASYNC_PIO
from broiler.pci import PciFunction
from broiler.vmm.machine import Machine, MachineConfig
from broiler.vmm.snapshot import jsonstate
from broiler.vmm.snapshot.devices import restore_devices, save_devices

pytestmark = pytest.mark.kvm

NEW_IO = 0x7000  # where the guest "moves" pci-msix's IO BAR0 (inside the IO window, nothing else there)
PM_TIMER_KEY = "pio:0x608:acpi-pm-timer"  # counts on in real time: compared apart


def config() -> MachineConfig:
    return MachineConfig(
        mem_size=64 * MiB, serial_output=lambda b: None, testdev=True, virtio_rng=True, async_delay=0.2
    )


def function(machine: Machine, name: str) -> PciFunction:
    assert machine.pci is not None
    return next(fn for fn in machine.pci.functions.values() if fn.name == name)


def wait_for(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within 10 s"
        time.sleep(0.01)


def poke(machine: Machine) -> None:
    """Put devices into states a fresh machine does not have."""
    assert machine.pci is not None and machine.serial is not None
    machine.serial.write(7, 1, 0xA5)
    machine.pio_bus.write(0x70, 1, 0x40)
    machine.pio_bus.write(0x71, 1, 0x99)
    msix = function(machine, "pci-msix")
    assert msix.slot is not None and msix.msix is not None
    table = msix.bars[1].mapped
    assert table is not None
    machine.pci.config_write(0, msix.slot, 0, 0x10, 4, NEW_IO)  # the guest moves BAR0 and its doorbell
    machine.mmio_bus.write(table, 4, 0xFEE0_0000)
    machine.mmio_bus.write(table + 8, 4, 0x41)
    machine.mmio_bus.write(table + 12, 4, 0)  # entry 0 unmasked
    machine.pci.config_write(0, msix.slot, 0, msix.msix.offset + 2, 2, 0x8000)  # MSI-X on
    machine.pio_bus.write(ASYNC_PIO.base, 2, 1)  # a trapped doorbell write: a completion in flight


def test_devices_come_back_in_a_second_machine_with_the_moved_bar_doorbell_live() -> None:
    with Machine(config()) as one:
        poke(one)
        saved = jsonstate.loads(jsonstate.dumps(save_devices(one)))
    with Machine(config()) as two:
        restore_devices(two, saved)
        again = jsonstate.loads(jsonstate.dumps(save_devices(two)))
        for state in (saved, again):
            state.pop(PM_TIMER_KEY)
            state["pio:0x60a0:async-pio"]["engine"].pop("remaining_us")  # time left, shrinking
        assert again == saved
        assert two.serial is not None and two.serial.read(7, 1) == 0xA5
        two.pio_bus.write(0x70, 1, 0x40)
        assert two.pio_bus.read(0x71, 1) == 0x99
        msix = function(two, "pci-msix")
        assert msix.bars[0].mapped == NEW_IO and two.pio_bus.read(NEW_IO + 0x18, 4) == 0  # registers at the new place
        (bell,) = [b for b in two.doorbells.active if b.owner is msix]
        assert (bell.pio, bell.addr) == (True, NEW_IO + 0x10)  # KVM accepted the ioeventfd there
        assert two.mmio_bus.read(msix.bars[1].mapped or 0, 8) == 0xFEE0_0000  # MSI-X table
        async_pio = two.pio_bus.find(ASYNC_PIO.base)
        assert async_pio is not None and async_pio.device.read(8, 4) == 2  # still busy: completes after restore
        two.loop.start()
        wait_for("the async-pio completion pending at the snapshot", lambda: async_pio.device.read(8, 4) == 1)
        os.eventfd_write(bell.fd, 1)  # what KVM does for a guest write at NEW_IO + 0x10
        wait_for("the moved doorbell's job", lambda: two.pio_bus.read(NEW_IO + 0x18, 4) == 1)
        assert msix.msix is not None and msix.msix.sent == 1  # its completion went out as the MSI-X message


def test_a_pause_before_the_snapshot_does_not_use_up_a_pending_completions_time() -> None:
    """The async work's time left is running time: the VM paused for 1.5 s before the save still has all of
    its delay but what ran between the doorbell and the pause."""
    delay = 3.0
    with Machine(MachineConfig(mem_size=64 * MiB, serial_output=lambda b: None, async_delay=delay)) as machine:
        machine.loop.start()
        rang = time.monotonic()
        machine.pio_bus.write(ASYNC_PIO.base, 2, 1)  # a trapped doorbell write: a completion due in 3 s
        assert machine.pause_control.pause()
        ran = time.monotonic() - rang  # at most this much running time passed before the pause
        time.sleep(1.5)
        left = save_devices(machine)["pio:0x60a0:async-pio"]["engine"]["remaining_us"] / 1e6
        assert delay - ran - 1e-5 <= left <= delay, (left, ran)  # before: ~1.5 s less (the pause counted)
        async_pio = machine.pio_bus.find(ASYNC_PIO.base)
        assert async_pio is not None and async_pio.device.read(8, 4) == 2  # still busy
        assert machine.pause_control.resume()
        wait_for("the completion after the resume", lambda: async_pio.device.read(8, 4) == 1)
