"""Machine assembly: one VM with its memory, buses, platform devices and vCPU threads.

The order of assembly is explicit (kvmtool's init levels, spec §8 "init order"):

1. open /dev/kvm, check capabilities, create the VM;
2. VMX bookkeeping pages (TSS, identity map), in-kernel irqchip and PIT;
3. guest RAM from the seed's memory map, registered as memory slots;
4. buses and the platform devices (legacy dummies, debug exit, UART, the seed's demo devices);
5. vCPUs (CPUID, LAPIC LINT0/LINT1);
6. a loader writes the guest and sets the entry state; then ``run``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from . import exitcodes
from .boot.flat64 import SEL_CODE64, SEL_DATA, LongModeState, load_flat64
from .bus import Device, MmioBus, PioBus, Region
from .devices.debug_exit import DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit
from .devices.legacy import register_legacy_ports
from .devices.serial import COM1_BASE, COM1_IRQ, UART_SIZE, Serial8250
from .devices.sync_demo import SYNC_BLOCK_SIZE, SYNC_MMIO_BASE, SYNC_PIO_BASE, SyncRegisters
from .errors import ConfigError
from .kvm import Kvm, Vcpu, abi
from .kvm.abi import buffer_address
from .memory import KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, GuestMemory, MemoryMap, MiB
from .vcpu import VcpuThread

REQUIRED_CAPS = [
    (abi.KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
    (abi.KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
]
IRQCHIP_CAPS = [
    (abi.KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
    (abi.KVM_CAP_PIT2, "KVM_CAP_PIT2"),
]
MAX_VCPUS = 64


@dataclass
class MachineConfig:
    mem_size: int = 256 * MiB
    cpus: int = 1
    demo_devices: bool = True     # the seed's demo devices (off: --no-demo-devices)
    irqchip: bool = True          # in-kernel PIC/IOAPIC/LAPIC and PIT
    serial_output: Callable[[bytes], None] | None = None  # default: the process's stdout
    kvm_path: str = "/dev/kvm"
    extra: dict[str, object] = field(default_factory=dict)


def add_platform_devices(m: Machine | PlatformSketch, config: MachineConfig) -> None:
    """The fixed device set, in a fixed order (so port and slot numbers never depend on imports)."""
    register_legacy_ports(m.pio_bus, lambda: m.request_exit(exitcodes.OK, "reset via port 0x92"))
    m.add_pio(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit(m.debug_exit))
    output = config.serial_output or _stdout_writer
    m.serial = Serial8250(output, m.irq_setter(COM1_IRQ), name="ttyS0")
    m.add_pio(COM1_BASE, UART_SIZE, m.serial)
    if config.demo_devices:
        m.add_pio(SYNC_PIO_BASE, SYNC_BLOCK_SIZE, SyncRegisters("sync-pio"))
        m.add_mmio(SYNC_MMIO_BASE, SYNC_BLOCK_SIZE, SyncRegisters("sync-mmio"))


class PlatformSketch:
    """The platform's buses and devices without a VM: what `broiler layout` prints."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.map = MemoryMap(config.mem_size)
        self.pio_bus = PioBus()
        self.mmio_bus = MmioBus()
        self.devices: list[Device] = []
        self.serial: Serial8250 | None = None
        add_platform_devices(self, config)

    def add_pio(self, base: int, size: int, device: Device, *, owner: Hashable | None = None,
                name: str | None = None) -> Region:
        self.devices.append(device)
        return self.pio_bus.register(base, size, device, owner=owner, name=name)

    def add_mmio(self, base: int, size: int, device: Device, *, owner: Hashable | None = None,
                 name: str | None = None) -> Region:
        self.devices.append(device)
        return self.mmio_bus.register(base, size, device, owner=owner, name=name)

    def request_exit(self, status: int, reason: str) -> None:
        return None

    def debug_exit(self, status: int) -> None:
        return None

    def irq_setter(self, gsi: int) -> Callable[[int], None] | None:
        return None


def _stdout_writer(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


class Machine:
    def __init__(self, config: MachineConfig) -> None:
        if not 1 <= config.cpus <= MAX_VCPUS:
            raise ConfigError(f"--cpus must be between 1 and {MAX_VCPUS}, not {config.cpus}")
        self.config = config
        self.map = MemoryMap(config.mem_size)  # validates the size before touching KVM
        self.kvm = Kvm(config.kvm_path)
        self.kvm.require(REQUIRED_CAPS + (IRQCHIP_CAPS if config.irqchip else []))
        self.vm = self.kvm.create_vm()
        self.stopping = False
        self.exit_status: int | None = None
        self.exit_reason = ""
        self._exit_lock = threading.Lock()
        self._done = threading.Event()
        self.coalesced_lock = threading.Lock()
        self.emulate: Callable[[VcpuThread], str | None] | None = None
        self.exit_handlers: dict[int, Callable[[VcpuThread], bool]] = {}
        self.on_stop: list[Callable[[], None]] = []

        # VMX needs these two private regions in the 32-bit space; other backends ignore them.
        if self.kvm.check_extension(abi.KVM_CAP_SET_TSS_ADDR) > 0:
            self.vm.set_tss_addr(KVM_TSS_ADDR)
            self.vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDR)
        if config.irqchip:
            self.vm.create_irqchip()
            self.vm.create_pit2(abi.KVM_PIT_SPEAKER_DUMMY)

        self.memory = GuestMemory(self.map)
        for slot, (start, end, mm) in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, start, end - start, buffer_address(mm))

        self.pio_bus = PioBus()
        self.mmio_bus = MmioBus()
        self.devices: list[Device] = []
        self.serial: Serial8250 | None = None
        self._add_platform_devices()

        self.vcpus: list[Vcpu] = [self.vm.create_vcpu(i) for i in range(config.cpus)]
        self.threads = [VcpuThread(self, v) for v in self.vcpus]
        self._setup_cpus()

    # -- devices ----------------------------------------------------------------------------
    def add_pio(self, base: int, size: int, device: Device, *, owner: Hashable | None = None,
                name: str | None = None) -> Region:
        if device not in self.devices:
            self.devices.append(device)
        return self.pio_bus.register(base, size, device, owner=owner, name=name)

    def add_mmio(self, base: int, size: int, device: Device, *, owner: Hashable | None = None,
                 name: str | None = None) -> Region:
        if device not in self.devices:
            self.devices.append(device)
        return self.mmio_bus.register(base, size, device, owner=owner, name=name)

    def _add_platform_devices(self) -> None:
        add_platform_devices(self, self.config)

    def irq_setter(self, gsi: int) -> Callable[[int], None] | None:
        if not self.config.irqchip:
            return None
        return lambda level: self.irq_line(gsi, level)

    def irq_line(self, gsi: int, level: int) -> None:
        if not self.stopping:
            self.vm.irq_line(gsi, level)

    # -- CPUs ---------------------------------------------------------------------------------
    def _setup_cpus(self) -> None:
        supported = self.kvm.supported_cpuid()
        for vcpu in self.vcpus:
            entries = []
            for e in supported:
                e2 = abi.kvm_cpuid_entry2.from_buffer_copy(e)
                if e2.function == 1:
                    e2.ebx = (e2.ebx & 0x00FFFFFF) | (vcpu.id << 24)  # initial APIC ID
                    e2.ecx |= 1 << 31  # hypervisor present
                entries.append(e2)
            vcpu.set_cpuid(entries)
            fpu = abi.kvm_fpu()
            fpu.fcw = 0x37F
            fpu.mxcsr = 0x1F80
            vcpu.set_fpu(fpu)
            if self.config.irqchip:
                self._setup_lapic(vcpu)

    @staticmethod
    def _setup_lapic(vcpu: Vcpu) -> None:
        """LINT0 = ExtINT and LINT1 = NMI, as a PC BIOS leaves them (spec §4.1)."""
        state = vcpu.get_lapic()
        regs = bytearray(state.regs)
        for offset, mode in ((0x350, 7), (0x360, 4)):
            value = int.from_bytes(regs[offset:offset + 4], "little")
            value = (value & ~0x700 & ~(1 << 16)) | (mode << 8)
            regs[offset:offset + 4] = value.to_bytes(4, "little")
        state.regs = bytes(regs)
        vcpu.set_lapic(state)

    def set_long_mode(self, vcpu: Vcpu, state: LongModeState) -> None:
        sregs = vcpu.get_sregs()
        code = abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=SEL_CODE64, type=11, present=1,
                               dpl=0, db=0, s=1, l=1, g=1)
        data = abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=SEL_DATA, type=3, present=1,
                               dpl=0, db=1, s=1, l=0, g=1)
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
        sregs.gdt.base, sregs.gdt.limit = state.gdt_base, state.gdt_limit
        sregs.idt.base, sregs.idt.limit = 0, 0
        vcpu.set_sregs(sregs)
        regs = abi.kvm_regs()
        regs.rip, regs.rsp, regs.rflags = state.rip, state.rsp, 0x2
        vcpu.set_regs(regs)

    # -- loaders ------------------------------------------------------------------------------
    def load_flat64(self, image: bytes) -> None:
        """Load a flat64 image; vCPU 0 starts at its first byte, the others wait for INIT/SIPI."""
        state = load_flat64(self.memory, image)
        self.set_long_mode(self.vcpus[0], state)

    # -- running ------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> int:
        """Run until the guest or the user ends the VM; returns the process exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = self._install_signal_handlers()
        try:
            for t in self.threads:
                t.start()
            while not self._done.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.request_exit(exitcodes.TIMEOUT, f"timeout after {timeout:g} s")
                    break
                self._done.wait(0.25 if remaining is None else min(remaining, 0.25))
        finally:
            self.stop()
            self._restore_signal_handlers(previous)
        return exitcodes.OK if self.exit_status is None else self.exit_status

    def request_exit(self, status: int, reason: str) -> None:
        """End the VM (from any thread). The first request decides the exit status."""
        with self._exit_lock:
            if self.exit_status is None:
                self.exit_status = status
                self.exit_reason = reason
        self.stopping = True
        self._done.set()
        self._kick_vcpus()

    def debug_exit(self, status: int) -> None:
        self.request_exit(status, f"debug exit {status >> 1:#x}")

    def vcpu_stopped(self, thread: VcpuThread) -> None:
        if all(t.stopped.is_set() for t in self.threads):
            self._done.set()

    def _kick_vcpus(self) -> None:
        for t in self.threads:
            t.request_immediate_exit()
            ident = t.thread.ident
            if ident is not None and t.thread.is_alive() and ident != threading.get_ident():
                try:
                    signal.pthread_kill(ident, signal.SIGUSR1)
                except (ProcessLookupError, OSError):
                    pass

    def stop(self) -> None:
        if not self.stopping:
            self.request_exit(exitcodes.OK, "stopped")
        self._kick_vcpus()
        for t in self.threads:
            if t.thread.is_alive() and t.thread.ident != threading.get_ident():
                t.thread.join(timeout=5)
                if t.thread.is_alive():  # a signal raced the KVM_RUN entry: kick again
                    self._kick_vcpus()
                    t.thread.join(timeout=5)
        if self.threads:
            self.threads[0].drain_coalesced()
        for hook in self.on_stop:
            hook()
        self.on_stop.clear()

    def _install_signal_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        # SIGUSR1 only has to interrupt KVM_RUN in a vCPU thread; its Python handler does nothing.
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: None)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(
                sig, lambda signum, _f: self.request_exit(exitcodes.INTERRUPTED,
                                                          f"signal {signal.Signals(signum).name}"))
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vm.close()
        self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

