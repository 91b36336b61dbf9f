"""What a machine is made of: the options ``broiler run`` turns into a ``Machine``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.memory import FileBacking, MiB
from ..devices.demo.async_demo import DEFAULT_DELAY
from ..devices.virtio.block import DiskImage
from ..devices.virtio.pci import TransportKind
from .userdev import DeviceSpec
from .virtio import DiskSpec


@dataclass
class MachineConfig:
    mem_size: int = 256 * MiB
    cpus: int = 1
    demo_devices: bool = True  # the seed's demo devices (off: --no-demo-devices)
    irqchip: bool = True  # in-kernel PIC/IOAPIC/LAPIC and PIT
    serial_output: Callable[[bytes], None] | None = None  # default: the process's stdout
    async_delay: float = DEFAULT_DELAY  # seconds of "work" in the async demo devices
    testdev: bool = False  # QEMU's test devices: fw_cfg, pc-testdev, pci-testdev (--testdev)
    # The HPET (--hpet). None: by guest kind -- the device is there and Multiboot kernels get its ACPI
    # table, Linux does not (a Linux boot with an HPET is not yet validated here; docs/linux.md).
    hpet: bool | None = None
    kvm_path: str = "/dev/kvm"
    disks: list[DiskSpec] = field(default_factory=list)  # virtio-blk, in order (--disk / -r)
    virtio_rng: bool = False  # --rng
    virtio_console: Callable[[bytes], None] | None = None  # where a virtio-console's output goes; None: no console
    virtio_transport: TransportKind = TransportKind.TRANSITIONAL
    open_disk: Callable[[DiskSpec], DiskImage] | None = None  # how a --disk is opened (replay: from the recording)
    devices: list[DeviceSpec] = field(default_factory=list)  # users' devices (--device), placed last
    extra: dict[str, object] = field(default_factory=dict)
    # RAM from a snapshot file instead of anonymous memory (vmm/snapshot/api.py restore_machine)
    memory_backing: FileBacking | None = None
