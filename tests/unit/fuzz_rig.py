"""The whole platform without KVM, for the device-model fuzzer (tests/unit/test_fuzz_devices.py).

``FuzzMachine`` offers the registration API ``add_platform_devices`` uses (as ``PlatformSketch`` does),
so the fuzzer meets exactly the devices a VM gets: legacy ports, the seed's demos, QEMU's test
devices, virtio-blk and virtio-rng (one function of each transport kind). What the machine would hand
the devices is replaced by recorders:

- ``SpyMemory``: guest RAM over a small mmap that checks, independently of ``GuestMemory``'s own
  bounds check, that every access which reached host memory lay inside guest RAM;
- ``FakeScheduler``: timers run when the fuzzer says so, and how many are pending is visible;
- ``FakeDoorbells``: a write that KVM would catch as an ioeventfd rings the callback instead;
- ``ErrorLog``: any ERROR record from ``broiler.*`` (a worker thread or the event loop catching a
  bug) and any exception escaping a thread.
"""

from __future__ import annotations

import logging
import mmap
import tempfile
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from broiler.core.bus import Device, MmioBus, PioBus, Region
from broiler.core.clock import DeviceClock
from broiler.core.irq import IrqAllocator, MsiMessage, MsiSink
from broiler.core.memory import GuestMemory, MemoryMap, MiB
from broiler.core.observe import DeviceMemory
from broiler.devices.legacy.serial import Serial8250
from broiler.devices.virtio.pci import TransportKind, VirtioPci
from broiler.devices.virtio.rng import VirtioRng
from broiler.pci import PciHost
from broiler.vmm.machine import MachineConfig
from broiler.vmm.platform import add_platform_devices
from broiler.vmm.virtio import DiskSpec
from tests.unit.fakes import FakeDoorbells, FakeIrqLine, FakeScheduler

RAM_SIZE = 4 * MiB
DISK_SIZE = 64 * 1024
# With every demo device busy at once, this many timers can be pending; more means kicks queue work.
MAX_PENDING_TIMERS = 32


class SpyMemory(GuestMemory):
    """GuestMemory that records every access that reached host memory outside guest RAM.

    The check is the memory map's, done again after ``GuestMemory._locate`` accepted the access, so a
    broken bounds check (or a device that reaches past it) shows up in ``escapes``.
    """

    def __init__(self, memory_map: MemoryMap) -> None:
        super().__init__(memory_map)
        self.escapes: list[tuple[int, int]] = []
        self.accesses = 0
        self._ram = [(r.start, r.end) for r in memory_map.ram]

    def _locate(self, gpa: int, size: int) -> tuple[mmap.mmap, int]:
        found = super()._locate(gpa, size)
        self.accesses += 1
        if not any(start <= gpa and gpa + size <= end for start, end in self._ram):
            self.escapes.append((gpa, size))
        return found


class ErrorLog(logging.Handler):
    """Collects ERROR records of ``broiler.*`` and exceptions that end a thread, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.problems: list[str] = []
        self._old_hook = threading.excepthook

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.append(f"{record.name}: {record.getMessage()} {record.exc_text or ''}")

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        self.problems.append(f"thread {args.thread}: {args.exc_type.__name__}: {args.exc_value}")

    def __enter__(self) -> ErrorLog:
        logging.getLogger("broiler").addHandler(self)
        threading.excepthook = self._thread_died
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("broiler").removeHandler(self)
        threading.excepthook = self._old_hook


@dataclass
class _Interrupts:
    """Machine.irqs as recorders: lines remember their levels, MSIs are counted."""

    allocator: IrqAllocator = field(default_factory=IrqAllocator)
    msis: int = 0

    def line(self, gsi: int) -> FakeIrqLine:
        return FakeIrqLine(gsi=gsi)

    def alloc_line(self, owner: str, kind: str = "isa") -> FakeIrqLine:
        return FakeIrqLine(gsi=self.allocator.alloc(owner, kind))

    alloc_edge_line = alloc_line

    def send_msi(self, message: MsiMessage) -> None:
        assert isinstance(message, MsiMessage)
        self.msis += 1

    def msi_irqfd_sink(self, slots: int) -> MsiSink:
        return self.send_msi


class _Loop:
    def __init__(self, scheduler: FakeScheduler) -> None:
        self.call_later = scheduler


class FuzzMachine:
    """Every platform device on real buses, with spies in place of KVM, timers and RAM."""

    def __init__(self, disk_path: str) -> None:
        self.config = MachineConfig(
            mem_size=RAM_SIZE,
            cpus=2,
            testdev=True,
            virtio_rng=True,
            disks=[DiskSpec(disk_path, serial="fuzz")],
            serial_output=self._console,
        )
        self.console_bytes = 0
        self.exits: list[int] = []
        self.map = MemoryMap(RAM_SIZE)
        self.memory = SpyMemory(self.map)
        self.dma_memory = DeviceMemory(self.memory)
        self.observer = None
        self.pio_bus = PioBus()
        self.mmio_bus = MmioBus()
        self.scheduler = FakeScheduler()
        self.loop = _Loop(self.scheduler)
        self.clock = DeviceClock()  # never started: time-keeping devices read 0
        self.doorbells = FakeDoorbells()
        self.irqs = _Interrupts()
        self.suspends = 0
        self.serial: Serial8250 | None = None
        self.pci: PciHost | None = None
        self.on_stop: list[Callable[[], None]] = []
        add_platform_devices(self, self.config)  # type: ignore[arg-type]  # the same API, duck-typed
        assert self.pci is not None
        for kind in (TransportKind.MODERN, TransportKind.LEGACY):
            fn = VirtioPci(
                VirtioRng(lambda n: b"\xa5" * n),
                memory=self.memory,
                msi_sink=self.irqs.send_msi,
                intx=FakeIrqLine(gsi=40),
                kind=kind,
            )
            self.pci.add(fn)
            self.on_stop.append(fn.close)

    def _console(self, data: bytes) -> None:
        self.console_bytes += len(data)

    # -- the registration API of Machine ----------------------------------------------------
    def add_pio(
        self, base: int, size: int, device: Device, *, owner: Hashable | None = None, name: str | None = None,
        coalesced: bool = False,
    ) -> Region:  # fmt: skip
        return self.pio_bus.register(base, size, device, owner=owner, name=name)

    def add_mmio(
        self, base: int, size: int, device: Device, *, owner: Hashable | None = None, name: str | None = None,
        coalesced: bool = False,
    ) -> Region:  # fmt: skip
        return self.mmio_bus.register(base, size, device, owner=owner, name=name)

    def request_exit(self, status: int, reason: str) -> None:
        self.exits.append(status)

    def debug_exit(self, status: int) -> None:
        self.exits.append(status << 1 | 1)

    def request_suspend(self) -> None:
        self.suspends += 1  # S3: the fuzzer only counts it (vmm/sleep.py needs vCPUs)

    # -- what the fuzzer does ---------------------------------------------------------------
    def guest_write(self, pio: bool, addr: int, size: int, value: int) -> None:
        """A guest write as KVM routes it: a registered doorbell swallows it, else the bus."""
        self.doorbells.guest_write(self.pio_bus if pio else self.mmio_bus, addr, size, value)

    def guest_read(self, pio: bool, addr: int, size: int) -> int:
        value = (self.pio_bus if pio else self.mmio_bus).read(addr, size)
        assert 0 <= value < 1 << (8 * size), f"{size}-byte read at {addr:#x} returned {value:#x}"
        return value

    def run_timers(self) -> None:
        assert len(self.scheduler.pending) <= MAX_PENDING_TIMERS, "kicks queue timers instead of coalescing"
        self.scheduler.run()

    def close(self) -> None:
        for hook in self.on_stop:
            hook()
        self.on_stop.clear()


def scratch_disk() -> str:
    """A small raw image for the fuzzed virtio-blk (kept for the session; the OS cleans /tmp)."""
    with tempfile.NamedTemporaryFile(prefix="broiler-fuzz-", suffix=".img", delete=False) as f:
        f.truncate(DISK_SIZE)
        return f.name
