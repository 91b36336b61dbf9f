"""The seed's PCI demo devices (spec §6.3), with Broiler's vendor:device IDs.

Every demo is function 0 of its own slot, class 0, revision 0, header type 0, subsystem 0, and gets
its BARs from the host's allocators (BAR0 is 0x100 bytes). Decode starts enabled: IO|MEM, or IO only
for the sync PIO device, as in Broiler.

Synchronous devices (no interrupt) -- the sync register block of ``broiler.devices.demo.sync_demo``
(SLOT_NUM +0 RW 0x20, SLOT_SEL +4 RW 0, MIN_FREQ +8 RO 0x10, MAX_FREQ +0xC RO 0x40; 4-byte
accesses only, anything else reads all ones and counts a guest error):

=================  =========  =======================================================
SyncPioPci         1003:1991  BAR0 IO: the sync block
SyncMmioPci        1006:1991  BAR0 MEM: the sync block
PciBaseDemo        1016:1413  BAR0 IO and BAR1 MEM: one sync block seen through both
=================  =========  =======================================================

Doorbell devices -- a "job" starts when the guest writes the doorbell at BAR0+0x10 and completes
``delay`` seconds later (Broiler slept in a thread; we ask ``schedule``), raising the interrupt:

=================  =========  ====================  ========  ===============  =======
AsyncPioPci        1009:1991  BAR0 IO               INTx      4-byte doorbell  2 s
AsyncMmioPci       1008:1991  BAR0 MEM              INTx      4-byte doorbell  2 s
IntxDemoPci        1016:1991  BAR0 IO               INTx      2-byte doorbell  5 s
MsiDemoPci         1001:1991  BAR0 IO               MSI       2-byte doorbell  2 s
MsixDemoPci        1002:1991  BAR0 IO, BAR1 MEM     MSI-X     2-byte doorbell  2 s
=================  =========  ====================  ========  ===============  =======

Register block of the doorbell devices (BAR0; the DMA devices add +0x0-+0xC, see pci_dma.py)::

    +0x10 DOORBELL     W   any write of any width starts a job (reads 0). The doorbell is also an
                           ioeventfd of the width above; both paths ring the same handler.
    +0x14 STATUS       R   bit0 DONE (a job completed, not yet acknowledged), bit1 ERROR (DMA
                           only), bit2 BUSY (a job is in flight)
                       W   write 1 to clear DONE / ERROR ("ACK"). Clearing DONE lowers INTx.
    +0x18 COMPLETIONS  R   number of completed jobs (u32, wraps)
    +0x1C ERROR_CODE   R   DMA only: why the last job failed (0 = it did not)

STATUS, COMPLETIONS and ERROR_CODE take 4-byte accesses; other offsets and sizes read all ones and
count a guest error.

Jobs run on the shared ``DoorbellEngine`` (``broiler/devices/doorbell_engine.py``), whose one rule
is: **a doorbell that rings while a job is in flight coalesces** -- it is counted in ``busy_rings``
and marks the device pending, and when the job completes exactly one more job runs (reading the
registers as they are then), however many rings arrived. No timer or log entry per ring, so a guest
flooding the doorbell cannot grow host memory. (Broiler's eventfd merged such kicks too.)

Differences from Broiler, on purpose: INTx is level-triggered and *lowered by the ACK* (Broiler
raised it and never lowered it); MSI and MSI-X are only sent when the guest enabled them (Broiler
ignored the enable and mask bits), and MSI-X masking keeps the message pending until unmasked; the
MSI fields reset to 0 (Broiler preset 0xFF only to dodge its "zero means read-only" config hack);
the MSI-X table has as many entries as the capability advertises (Broiler kept 16 behind a 1-entry
capability and aliased the PBA onto entry 8). ID clash: Broiler's README lists pci-msix-base as
1003:1991, which is also the sync PIO device; the code uses 1002:1991, and so do we (code wins).
"""

from __future__ import annotations

import enum
import threading
from typing import Any

from ...core.bus import Device, all_ones
from ...core.eventloop import Schedule
from ...core.irq import IrqLine, MsiSink
from ...core.state import STATELESS
from ...pci import BarDoorbell, BarKind, PciFunction
from ...pci.config import CMD_IO, CMD_MEMORY
from ..doorbell_engine import DoorbellEngine, Run
from .demo_state import load_doorbell_demo, save_doorbell_demo
from .sync_demo import SyncRegisters

BROILER_DEVICE = 0x1991
DEMO_BAR_SIZE = 0x100

REG_DOORBELL = 0x10
REG_STATUS = 0x14
REG_COMPLETIONS = 0x18
REG_ERROR_CODE = 0x1C

STATUS_DONE = 0x1
STATUS_ERROR = 0x2
STATUS_BUSY = 0x4


class IrqKind(enum.Enum):
    INTX = "intx"
    MSI = "msi"
    MSIX = "msix"


# -- synchronous devices -----------------------------------------------------------------------
class SyncPioPci(PciFunction):
    """1003:1991 Broiler-Synchronous-pio-PCI: the sync block in an IO BAR."""

    state_fields = ()  # the registers are BAR0's handler (saved with the BARs)

    def __init__(self) -> None:
        super().__init__(vendor_id=0x1003, device_id=BROILER_DEVICE, name="sync-pio-pci", command=CMD_IO)
        self.registers = SyncRegisters("sync-pio-pci")
        self.add_bar(0, BarKind.IO, DEMO_BAR_SIZE, self.registers)


class SyncMmioPci(PciFunction):
    """1006:1991 Broiler-Synchronous-mmio-PCI: the sync block in a memory BAR."""

    state_fields = ()  # the registers are BAR0's handler (saved with the BARs)

    def __init__(self) -> None:
        super().__init__(vendor_id=0x1006, device_id=BROILER_DEVICE, name="sync-mmio-pci", command=CMD_IO | CMD_MEMORY)
        self.registers = SyncRegisters("sync-mmio-pci")
        self.add_bar(0, BarKind.MEM32, DEMO_BAR_SIZE, self.registers)


class PciBaseDemo(PciFunction):
    """1016:1413 Broiler-pci-base: one sync block behind an IO BAR0 and a memory BAR1."""

    state_fields = ()  # the registers are BAR0's handler (saved with the BARs)

    def __init__(self) -> None:
        super().__init__(vendor_id=0x1016, device_id=0x1413, name="pci-base", command=CMD_IO | CMD_MEMORY)
        self.registers = SyncRegisters("pci-base")
        self.add_bar(0, BarKind.IO, DEMO_BAR_SIZE, self.registers)
        self.add_bar(1, BarKind.MEM32, DEMO_BAR_SIZE, self.registers)


# -- doorbell devices --------------------------------------------------------------------------
class DemoRegisters(Device):
    """BAR0 of a doorbell device: forwards to the device's ``bar_read``/``bar_write``."""

    state_fields = STATELESS  # the registers live in the function

    def __init__(self, owner: DoorbellDemo) -> None:
        super().__init__()
        self.owner = owner
        self.name = owner.name

    def read(self, offset: int, size: int) -> int:
        return self.owner.bar_read(self, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.owner.bar_write(self, offset, size, value)


class UnusedRegisters(Device):
    """The rest of a BAR nobody decodes (around an MSI-X table): all ones, counted."""

    state_fields = STATELESS

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def read(self, offset: int, size: int) -> int:
        self.guest_error(f"read of {size} bytes at unused +{offset:#x}")
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.guest_error(f"write of {size} bytes at unused +{offset:#x}")


class DoorbellDemo(PciFunction):
    """A device whose doorbell starts a job that completes ``delay`` seconds later with an interrupt.

    Subclasses override ``start_job`` (runs at ring time; returns an error code, 0 = fine) and
    ``extra_read``/``extra_write`` for registers below +0x10.
    """

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        name: str,
        bar_kind: BarKind,
        doorbell_length: int,
        irq_kind: IrqKind,
        schedule: Schedule,
        delay: float,
        irq: IrqLine | None = None,
        msi_sink: MsiSink | None = None,
        msi_vectors: int = 1,
        msi_64bit: bool = False,
        msi_masking: bool = False,
        msix_vectors: int = 1,
    ) -> None:
        super().__init__(vendor_id=vendor_id, device_id=device_id, name=name, command=CMD_IO | CMD_MEMORY)
        self.engine = DoorbellEngine(schedule, delay, on_start=self._start_run, on_complete=self._complete_run)
        self.irq_kind = irq_kind
        self.registers = DemoRegisters(self)
        self.doorbell = BarDoorbell(REG_DOORBELL, doorbell_length, None, self.ring)
        self.add_bar(0, bar_kind, DEMO_BAR_SIZE, self.registers, doorbells=[self.doorbell])
        if irq_kind is IrqKind.INTX:
            if irq is None:
                raise ValueError(f"{name}: an INTx device needs an IrqLine")
            self.set_intx(irq)
        else:
            if msi_sink is None:
                raise ValueError(f"{name}: an MSI/MSI-X device needs an MsiSink")
            if irq_kind is IrqKind.MSI:
                self.add_msi(msi_sink, vectors=msi_vectors, is64=msi_64bit, per_vector_mask=msi_masking)
            else:
                self.add_bar(1, BarKind.MEM32, DEMO_BAR_SIZE, UnusedRegisters(f"{name} BAR1"))
                self.add_msix(msi_sink, bar=1, vectors=msix_vectors, table_offset=0, pba_offset=0x80)
        self._state = threading.Lock()
        self.status = 0  # DONE and ERROR; BUSY is the engine's
        self.error_code = 0

    # -- snapshot: a job in flight completes after the restore (demo_state.py) ----------------
    def save_function_state(self) -> dict[str, Any]:
        return save_doorbell_demo(self)

    def load_function_state(self, state: dict[str, Any]) -> None:
        load_doorbell_demo(self, state)

    # -- what the engine counts ------------------------------------------------------------
    @property
    def delay(self) -> float:
        return self.engine.delay

    @property
    def rings(self) -> int:
        return self.engine.kicks

    @property
    def busy_rings(self) -> int:
        """Rings that arrived while a job was in flight (coalesced into one more job)."""
        return self.engine.busy_kicks

    @property
    def completions(self) -> int:
        return self.engine.runs_completed & 0xFFFF_FFFF

    # -- the job ---------------------------------------------------------------------------
    def ring(self, kicks: int = 1) -> None:
        """The doorbell rang (ioeventfd callback with its count, or a write that reached the device)."""
        self.engine.kick(kicks)

    def start_job(self) -> int:
        """Do the work of a job when it starts; return an error code (0 = success)."""
        return 0

    def _start_run(self, run: Run) -> int:
        return self.start_job()

    def _complete_run(self, run: Run, result: int) -> None:
        """The job's delay is over: publish the result and interrupt."""
        with self._state:
            self.status |= STATUS_DONE
            self.error_code = result
            if result:
                self.status |= STATUS_ERROR
        self.interrupt()

    def interrupt(self) -> None:
        if self.irq_kind is IrqKind.INTX:
            self.raise_intx()
        elif self.irq_kind is IrqKind.MSI and self.msi is not None:
            self.msi.notify(0)
        elif self.msix is not None:
            self.msix.notify(0)

    def ack(self, bits: int) -> None:
        """Write-1-to-clear STATUS bits DONE/ERROR; clearing DONE lowers INTx."""
        with self._state:
            self.status &= ~(bits & (STATUS_DONE | STATUS_ERROR))
            lower = bool(bits & STATUS_DONE)
        if lower and self.irq_kind is IrqKind.INTX:
            self.lower_intx()

    # -- BAR0 registers --------------------------------------------------------------------
    def bar_read(self, regs: Device, offset: int, size: int) -> int:
        if offset == REG_DOORBELL and size in (1, 2, 4):
            return 0
        if size == 4 and offset in (REG_STATUS, REG_COMPLETIONS, REG_ERROR_CODE):
            with self._state:
                status = self.status | (STATUS_BUSY if self.engine.busy else 0)
                return {REG_STATUS: status, REG_COMPLETIONS: self.completions, REG_ERROR_CODE: self.error_code}[offset]
        value = self.extra_read(offset, size)
        if value is None:
            regs.guest_error(f"{size}-byte read at +{offset:#x}")
            return all_ones(size)
        return value

    def bar_write(self, regs: Device, offset: int, size: int, value: int) -> None:
        if offset == REG_DOORBELL:
            self.ring(1)
        elif offset == REG_STATUS and size == 4:
            self.ack(value)
        elif not self.extra_write(offset, size, value):
            regs.guest_error(f"{size}-byte write at +{offset:#x} ignored")

    def extra_read(self, offset: int, size: int) -> int | None:
        """Registers a subclass adds; None = not a register."""
        return None

    def extra_write(self, offset: int, size: int, value: int) -> bool:
        """Registers a subclass adds; False = not a register."""
        return False


class AsyncPioPci(DoorbellDemo):
    """1009:1991 Broiler-Asynchronous-pio-PCI: IO BAR0, 4-byte doorbell, INTx after 2 s."""

    def __init__(self, *, irq: IrqLine, schedule: Schedule, delay: float = 2.0) -> None:
        super().__init__(
            vendor_id=0x1009,
            device_id=BROILER_DEVICE,
            name="async-pio-pci",
            bar_kind=BarKind.IO,
            doorbell_length=4,
            irq_kind=IrqKind.INTX,
            schedule=schedule,
            delay=delay,
            irq=irq,
        )


class AsyncMmioPci(DoorbellDemo):
    """1008:1991 Broiler-Asynchronous-mmio-PCI: memory BAR0, 4-byte doorbell, INTx after 2 s."""

    def __init__(self, *, irq: IrqLine, schedule: Schedule, delay: float = 2.0) -> None:
        super().__init__(
            vendor_id=0x1008,
            device_id=BROILER_DEVICE,
            name="async-mmio-pci",
            bar_kind=BarKind.MEM32,
            doorbell_length=4,
            irq_kind=IrqKind.INTX,
            schedule=schedule,
            delay=delay,
            irq=irq,
        )


class IntxDemoPci(DoorbellDemo):
    """1016:1991 Broiler-pci-intX-base: IO BAR0, 2-byte doorbell, INTx after 5 s."""

    def __init__(self, *, irq: IrqLine, schedule: Schedule, delay: float = 5.0) -> None:
        super().__init__(
            vendor_id=0x1016,
            device_id=BROILER_DEVICE,
            name="pci-intx",
            bar_kind=BarKind.IO,
            doorbell_length=2,
            irq_kind=IrqKind.INTX,
            schedule=schedule,
            delay=delay,
            irq=irq,
        )


class MsiDemoPci(DoorbellDemo):
    """1001:1991 Broiler-pci-msi-base: IO BAR0, 2-byte doorbell, MSI after 2 s.

    The capability is Broiler's (1 vector, 32-bit, no masking) unless asked otherwise.
    """

    def __init__(
        self,
        *,
        msi_sink: MsiSink,
        schedule: Schedule,
        delay: float = 2.0,
        vectors: int = 1,
        is64: bool = False,
        per_vector_mask: bool = False,
    ) -> None:
        super().__init__(
            vendor_id=0x1001,
            device_id=BROILER_DEVICE,
            name="pci-msi",
            bar_kind=BarKind.IO,
            doorbell_length=2,
            irq_kind=IrqKind.MSI,
            schedule=schedule,
            delay=delay,
            msi_sink=msi_sink,
            msi_vectors=vectors,
            msi_64bit=is64,
            msi_masking=per_vector_mask,
        )


class MsixDemoPci(DoorbellDemo):
    """1002:1991 Broiler-pci-msix-base: IO BAR0, 2-byte doorbell; MSI-X table BAR1+0, PBA BAR1+0x80."""

    def __init__(self, *, msi_sink: MsiSink, schedule: Schedule, delay: float = 2.0, vectors: int = 1) -> None:
        super().__init__(
            vendor_id=0x1002,
            device_id=BROILER_DEVICE,
            name="pci-msix",
            bar_kind=BarKind.IO,
            doorbell_length=2,
            irq_kind=IrqKind.MSIX,
            schedule=schedule,
            delay=delay,
            msi_sink=msi_sink,
            msix_vectors=vectors,
        )
