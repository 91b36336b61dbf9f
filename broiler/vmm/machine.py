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
import threading
import time
from collections.abc import Callable, Hashable, Sequence

from .. import exitcodes
from ..boot.acpi import ACPI_AREA, write_acpi
from ..boot.entry import EntryState, SegmentState, protected_mode_state
from ..boot.firmware import pci_irqs
from ..boot.flat64 import flat64_entry_state, load_flat64
from ..boot.multiboot import load_multiboot_files
from ..core.bus import Device, MmioBus, PioBus, Region
from ..core.clock import DeviceClock
from ..core.coalesced import CoalescedRing
from ..core.eventloop import EventLoop
from ..core.exits import ExitTable
from ..core.ioeventfd import Doorbells
from ..core.irq import Interrupts
from ..core.memory import KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, GuestMemory, MemoryMap
from ..core.observe import DeviceMemory, Observer
from ..core.pause import VmPause
from ..core.vcpu import VcpuThread, install_kick_handler
from ..devices.legacy.acpi_pm import AcpiPm
from ..devices.legacy.cmos import Cmos
from ..devices.legacy.serial import Serial8250
from ..emulate.syscall_assist import SyscallAssist
from ..errors import ConfigError
from ..kvm import Kvm, Vcpu, abi
from ..kvm.abi import buffer_address
from ..pci import PciHost
from .config import MachineConfig
from .platform import add_platform_devices, firmware_declared_ports
from .sleep import SleepControl
from .userdev import DeviceContext, add_device

REQUIRED_CAPS = [
    (abi.KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
    (abi.KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
]
IRQCHIP_CAPS = [
    (abi.KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
    (abi.KVM_CAP_PIT2, "KVM_CAP_PIT2"),
]
MAX_VCPUS = 16


class Machine:
    rtc: Cmos | None = None  # set by the platform: S3's wake alarm and PM1 block (vmm/sleep.py)
    acpi_pm: AcpiPm | None = None

    def __init__(self, config: MachineConfig) -> None:
        if not 1 <= config.cpus <= MAX_VCPUS:
            raise ConfigError(f"--cpus must be between 1 and {MAX_VCPUS}, not {config.cpus}")
        self.config = config
        self.map = MemoryMap(config.mem_size)  # validates the size before touching KVM
        self.kvm = Kvm(config.kvm_path)
        self.kvm.require(REQUIRED_CAPS + (IRQCHIP_CAPS if config.irqchip else []))
        self.vm = self.kvm.create_vm()
        install_kick_handler()
        self.stopping = False
        self.exit_status: int | None = None
        self.exit_reason = ""
        self._exit_lock = threading.Lock()
        self._done = threading.Event()
        self.exits = ExitTable(self)  # every exit but PIO/MMIO; handlers register here (core/exits.py)
        self.decisions: dict[str, dict[str, object]] = {}  # what a loader chose from the host, and why
        self.syscall_assist: SyscallAssist | None = None  # Linux on KVM-PVM (broiler/emulate/syscall_assist.py)
        self.on_stop: list[Callable[[], None]] = []
        self.tracer: object | None = None  # set by broiler.frontend.trace.Tracer.attach
        self.guest_name = "(nothing loaded)"
        self.device_faults: list[str] = []  # reports of users' devices that misbehaved (vmm/userdev.py)
        self.user_contexts: list[DeviceContext] = []  # users' devices' contexts: their pending work (userdev.py)

        # VMX needs these two private regions in the 32-bit space; other backends ignore them.
        if self.kvm.check_extension(abi.KVM_CAP_SET_TSS_ADDR) > 0:
            self.vm.set_tss_addr(KVM_TSS_ADDR)
            self.vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDR)
        if config.irqchip:
            self.vm.create_irqchip()
            self.vm.create_pit2(abi.KVM_PIT_SPEAKER_DUMMY)
        self.irqs = Interrupts(self.vm, lambda: self.stopping, routing=config.irqchip)
        self.loop = EventLoop()
        self.clock = DeviceClock()  # what time-keeping devices read; starts with the vCPUs
        # Without KVM_CAP_IOEVENTFD doorbells still work: every doorbell write traps to the device.
        self.doorbells = Doorbells(self.vm if self.kvm.check_extension(abi.KVM_CAP_IOEVENTFD) > 0 else None, self.loop)
        self.coalesced_pio = self.kvm.check_extension(abi.KVM_CAP_COALESCED_PIO) > 0

        self.memory = GuestMemory(self.map, config.memory_backing)
        self.dma_memory = DeviceMemory(self.memory)  # what devices get: the same RAM, observable (DMA)
        self.observer: Observer | None = None  # set by core/observe.attach_observer (--trace, --record)
        for slot, (start, end, mm) in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, start, end - start, buffer_address(mm))

        self.pio_bus = PioBus()
        self.mmio_bus = MmioBus()
        self.devices: list[Device] = []
        self.coalesced = CoalescedRing(self.pio_bus, self.mmio_bus)
        self.serial: Serial8250 | None = None
        self.pci: PciHost | None = None
        self._add_platform_devices()

        self.vcpus: list[Vcpu] = [self.vm.create_vcpu(i) for i in range(config.cpus)]
        self.threads = [self._vcpu_thread(v) for v in self.vcpus]
        self.pause_control = VmPause(self.threads, self.loop)  # `broiler pause/resume` (core/pause.py)
        self._setup_cpus()
        self.sleep = SleepControl(self)  # S3 suspend/resume (vmm/sleep.py); after _setup_cpus: the APICs it restores

    # -- devices ----------------------------------------------------------------------------
    add_device = add_device  # a user's device, guarded (vmm/userdev.py; the public way, docs/api.md)

    def add_pio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region:
        """Put ``device`` on the port bus; ``coalesced`` queues its writes in the ring (KVM_CAP_COALESCED_PIO)."""
        if coalesced and not self.coalesced_pio:
            raise ConfigError("this host's KVM has no coalesced PIO")
        return self._add(self.pio_bus, base, size, device, owner, name, coalesced)

    def add_mmio(
        self,
        base: int,
        size: int,
        device: Device,
        *,
        owner: Hashable | None = None,
        name: str | None = None,
        coalesced: bool = False,
    ) -> Region:
        """Put ``device`` on the MMIO bus; ``coalesced`` makes its writes go through the ring."""
        return self._add(self.mmio_bus, base, size, device, owner, name, coalesced)

    def _add(
        self,
        bus: PioBus | MmioBus,
        base: int,
        size: int,
        device: Device,
        owner: Hashable | None,
        name: str | None,
        coalesced: bool,
    ) -> Region:
        region = bus.register(base, size, device, owner=owner, name=name)
        if coalesced:
            pio = bus is self.pio_bus
            try:
                self.vm.register_coalesced(base, size, pio=pio)
            except Exception:
                bus.unregister(region)
                raise
            self.coalesced.zones.append((base, size, pio))
        if device not in self.devices:
            self.devices.append(device)
        return region

    def _add_platform_devices(self) -> None:
        add_platform_devices(self, self.config)

    # -- CPUs ---------------------------------------------------------------------------------
    def _vcpu_thread(self, vcpu: Vcpu) -> VcpuThread:
        """A vCPU thread is handed exactly what its loop uses (core/vcpu.py): never the Machine itself."""
        return VcpuThread(
            vcpu,
            pio_bus=self.pio_bus,
            mmio_bus=self.mmio_bus,
            exits=self.exits,
            coalesced=self.coalesced,
            control=self,
            memory=self.memory,
        )

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
        """LINT1 = NMI on every CPU and LINT0 = ExtINT on the BSP only, as a PC BIOS leaves them (spec §4.1;
        the MP spec's virtual-wire mode): with ExtINT on the APs too, each of them would race to take the
        PIC's interrupt and the losers would read a spurious one."""
        state = vcpu.get_lapic()
        # A writable byte view of the whole struct: ``state.regs`` (a c_char array) stops at the first NUL.
        regs = memoryview(state).cast("B")
        for offset, mode in ((0x350, 7), (0x360, 4)) if vcpu.id == 0 else ((0x360, 4),):
            value = int.from_bytes(regs[offset : offset + 4], "little")
            value = (value & ~0x700 & ~(1 << 16)) | (mode << 8)
            regs[offset : offset + 4] = value.to_bytes(4, "little")
        vcpu.set_lapic(state)

    @staticmethod
    def enter(vcpu: Vcpu, state: EntryState) -> None:
        """Set a vCPU's entry state: the one place every loader's CPU state goes through. GDT, IDT and
        TR left as None keep what KVM has; general registers not named in ``state.regs`` are 0."""
        sregs = vcpu.get_sregs()
        sregs.cs = Machine._segment(state.cs)
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = Machine._segment(state.data)
        if state.tr is not None:
            sregs.tr = Machine._segment(state.tr)
        if state.gdt is not None:
            sregs.gdt.base, sregs.gdt.limit = state.gdt
        if state.idt is not None:
            sregs.idt.base, sregs.idt.limit = state.idt
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
        vcpu.set_sregs(sregs)
        kregs = abi.kvm_regs()
        kregs.rip = state.rip
        for name, value in state.regs.items():
            setattr(kregs, name, value)
        vcpu.set_regs(kregs)

    @staticmethod
    def _segment(s: SegmentState) -> abi.kvm_segment:
        return abi.kvm_segment(
            base=s.base,
            limit=s.limit,
            selector=s.selector,
            type=s.type,
            present=s.present,
            dpl=s.dpl,
            db=s.db,
            s=s.s,
            l=s.l,
            g=s.g,
            avl=s.avl,
            unusable=s.unusable,
        )

    def set_long_mode(self, vcpu: Vcpu, state: EntryState | None = None) -> None:
        """Enter ``state``, by default the flat64 one for this vCPU (its index in RDI, its own stack)."""
        self.enter(vcpu, flat64_entry_state(vcpu.id) if state is None else state)

    def set_protected_mode(self, vcpu: Vcpu, *, entry: int, eax: int, ebx: int) -> None:
        """32-bit protected mode, paging off, flat segments, interrupts off (the Multiboot state)."""
        self.enter(vcpu, protected_mode_state(entry, regs={"rax": eax, "rbx": ebx}))

    # -- loaders ------------------------------------------------------------------------------
    def load_multiboot(self, kernel: str, *, cmdline: str = "", initrds: tuple[str, ...] = ()) -> object:
        """Load a Multiboot v1 kernel; vCPU 0 enters it, the others wait for INIT/SIPI like real APs."""
        image = load_multiboot_files(self.memory, kernel, cmdline=cmdline, initrds=initrds, reserved=[ACPI_AREA])
        # The ACPI tables a pc machine gives test kernels (RSDP in the F-segment, FADT with the PM timer).
        write_acpi(
            self.memory,
            len(self.vcpus),
            pci_irqs(self.pci),
            reserved_io=firmware_declared_ports(self.pio_bus),
            hpet=self.config.hpet is not False,
        )
        self.guest_name = f"multiboot {kernel}"
        self.set_protected_mode(self.vcpus[0], entry=image.entry, eax=image.eax, ebx=image.info_addr)
        return image

    def enable_syscall_assist(self, spare_pages: Sequence[int]) -> SyscallAssist:
        """Complete user-mode ``syscall`` in broiler (for KVM-PVM; broiler/emulate/syscall.py).
        ``spare_pages``: guest-physical pages the guest never uses, for the trampoline's page tables."""
        self.syscall_assist = SyscallAssist(self.vm, self.memory, self.exits, spare_pages)
        return self.syscall_assist

    def load_flat64(self, image: bytes) -> None:
        """Load a flat64 image. Every vCPU enters at its first byte together, with RDI = its index
        and its own 16 KiB stack below 0x80000 (the flat64 contract; no INIT/SIPI dance needed)."""
        load_flat64(self.memory, image)
        self.guest_name = f"flat64 image ({len(image)} bytes)"
        for vcpu in self.vcpus:
            self.set_long_mode(vcpu)
            if vcpu.id and self.config.irqchip:
                vcpu.set_mp_state(abi.KVM_MP_STATE_RUNNABLE)  # APs would otherwise wait for SIPI

    # -- running ------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> int:
        """Run until the guest or the user ends the VM; returns the process exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = self._install_signal_handlers()
        try:
            self.clock.start()
            self.loop.start()
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

    def request_suspend(self) -> None:
        """The guest asked for S3 (PM1a_CNT, on a vCPU thread)."""
        self.sleep.request_suspend()

    def vcpu_stopped(self) -> None:
        """Called by each vCPU thread as it ends: the VM is done when none is left."""
        if all(t.stopped.is_set() for t in self.threads):
            self._done.set()

    def _kick_vcpus(self) -> None:
        for t in self.threads:
            t.request_immediate_exit()
            t.kick()

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
            self.threads[0].drain_coalesced()  # nothing the guest wrote is lost
        self.doorbells.close()
        self.irqs.close()
        self.loop.stop()
        for hook in self.on_stop:
            hook()
        self.on_stop.clear()

    def _install_signal_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(
                sig,
                lambda signum, _f: self.request_exit(exitcodes.INTERRUPTED, f"signal {signal.Signals(signum).name}"),
            )
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def close(self) -> None:
        self.memory.release_backing()
        self.loop.close()
        for v in self.vcpus:
            v.close()
        self.vm.close()
        self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
