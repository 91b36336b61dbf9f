"""The seed's PCI DMA demo devices (spec §6.3): copy between a device buffer and guest RAM.

=============  =========  =================================  ==========  ======================
DmaIntxPci     0309:1989  BAR0 IO                            INTx        5 s, 4 KiB buffer
DmaMsiPci      1024:1991  BAR0 IO, MSI cap                   MSI         5 s, 4 KiB buffer
DmaMsixPci     1026:1991  BAR0 IO, BAR1 MEM (MSI-X table)    MSI-X       5 s, 4 KiB buffer
DmaBufPci      1004:1991  BAR0 IO, BAR1 MEM (MSI-X table)    MSI-X       0 s, 1 MiB buffer
=============  =========  =================================  ==========  ======================

The 4 KiB buffer starts with Broiler's text (typo included), NUL-terminated, rest zero; the 1 MiB
buffer starts zeroed (Broiler's was uninitialised malloc memory).

BAR0 registers (u32, 4-byte accesses), followed by the doorbell block of ``pci_demos``::

    +0x00 DMA_SRC    RW  source: device-buffer offset (DIR 0) or guest-physical address (DIR 1)
    +0x04 DMA_DST    RW  destination: guest-physical address (DIR 0) or device-buffer offset (DIR 1)
    +0x08 DMA_DIR    RW  0 = device -> guest RAM ("PCI_TO_DDR"), 1 = guest RAM -> device
    +0x0C DMA_LEN    RW  bytes to copy (0 copies nothing and succeeds, whatever SRC/DST say)
    +0x10 DOORBELL   W   2-byte ioeventfd; any write starts the transfer
    +0x14 STATUS     RW1C bit0 DONE, bit1 ERROR, bit2 BUSY; write 1s to acknowledge (lowers INTx)
    +0x18 COMPLETIONS R
    +0x1C ERROR_CODE R   1 bad DIR, 2 outside the device buffer, 3 not wholly inside guest RAM

The copy happens when the doorbell rings, from the registers as they are then; DONE (and ERROR), the
error code and the interrupt come ``delay`` seconds later. A transfer is all or nothing: DIR is
checked, then the device-buffer range, then the guest range with ``GuestMemory.contains``, and any
failure -- a bad DIR, a range past the end of the device buffer, a guest address outside RAM or
crossing its end (RAM is not contiguous across the PCI hole), a huge length -- copies nothing, sets
ERROR and still interrupts. Guest addresses are 32-bit, so RAM above 4 GiB cannot be reached. No
guest value can make broiler touch host memory outside the buffer or guest RAM.

Differences from Broiler: the bounds checks and the error status (Broiler had none and crashed or
scribbled); a bad DIR is an error (Broiler used uninitialised pointers); DMA-BUF interrupts for both
directions (Broiler only for DIR 0) so a driver can wait for either.
"""

from __future__ import annotations

from typing import Any

from ...core.eventloop import Schedule
from ...core.irq import IrqLine, MsiSink
from ...core.memory import GuestMemory
from ...core.state import check_keys, load_fields, save_fields
from ...errors import GuestMemoryError
from ...pci import BarKind
from .pci_demos import BROILER_DEVICE, DoorbellDemo, IrqKind

REG_SRC = 0x00
REG_DST = 0x04
REG_DIR = 0x08
REG_LEN = 0x0C

DIR_TO_RAM = 0
DIR_FROM_RAM = 1

ERR_NONE = 0
ERR_BAD_DIR = 1
ERR_DEVICE_RANGE = 2
ERR_RAM_RANGE = 3

BROILER_DMA_TEXT = b"Weclome Broiler DMA, Advanced Programmable HypV Controller, CommandWord IOAPIC etc."
SMALL_BUFFER = 4096
BIG_BUFFER = 1 << 20


class DmaDemo(DoorbellDemo):
    """The shared DMA engine: SRC/DST/DIR/LEN, a device buffer, guest RAM through GuestMemory."""

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        name: str,
        memory: GuestMemory,
        irq_kind: IrqKind,
        schedule: Schedule,
        delay: float,
        irq: IrqLine | None = None,
        msi_sink: MsiSink | None = None,
        buffer_size: int = SMALL_BUFFER,
        preload: bytes = BROILER_DMA_TEXT,
    ) -> None:
        super().__init__(
            vendor_id=vendor_id,
            device_id=device_id,
            name=name,
            bar_kind=BarKind.IO,
            doorbell_length=2,
            irq_kind=irq_kind,
            schedule=schedule,
            delay=delay,
            irq=irq,
            msi_sink=msi_sink,
        )
        self.memory = memory
        self.buffer = bytearray(buffer_size)
        self.buffer[: len(preload)] = preload[:buffer_size]
        self.regs = {REG_SRC: 0, REG_DST: 0, REG_DIR: 0, REG_LEN: 0}
        self.bytes_copied = 0

    DMA_FIELDS = ("regs:32", "buffer", "bytes_copied")

    def save_function_state(self) -> dict[str, Any]:
        state = super().save_function_state()
        with self._state:
            state["dma"] = save_fields(self, self.DMA_FIELDS)
        return state

    def load_function_state(self, state: dict[str, Any]) -> None:
        saved = dict(check_keys(state, ("status", "error_code", "engine", "dma"), self.name))
        dma = saved.pop("dma")
        with self._state:
            load_fields(self, self.DMA_FIELDS, dma, self.name)
        super().load_function_state(saved)

    def extra_read(self, offset: int, size: int) -> int | None:
        if size == 4 and offset in self.regs:
            with self._state:
                return self.regs[offset]
        return None

    def extra_write(self, offset: int, size: int, value: int) -> bool:
        if size == 4 and offset in self.regs:
            with self._state:
                self.regs[offset] = value & 0xFFFF_FFFF
            return True
        return False

    def start_job(self) -> int:
        with self._state:
            src, dst, direction, length = (
                self.regs[REG_SRC],
                self.regs[REG_DST],
                self.regs[REG_DIR],
                self.regs[REG_LEN],
            )
        return self.transfer(src, dst, direction, length)

    def transfer(self, src: int, dst: int, direction: int, length: int) -> int:
        """Copy ``length`` bytes; returns an ERR_* code and copies nothing unless it is ERR_NONE."""
        if direction not in (DIR_TO_RAM, DIR_FROM_RAM):
            return ERR_BAD_DIR
        if length == 0:
            return ERR_NONE
        dev_off, gpa = (src, dst) if direction == DIR_TO_RAM else (dst, src)
        if dev_off + length > len(self.buffer):
            return ERR_DEVICE_RANGE
        if not self.memory.contains(gpa, length):
            return ERR_RAM_RANGE
        try:
            if direction == DIR_TO_RAM:
                self.memory.write(gpa, bytes(self.buffer[dev_off : dev_off + length]))
            else:
                self.buffer[dev_off : dev_off + length] = self.memory.read(gpa, length)
        except GuestMemoryError:
            return ERR_RAM_RANGE
        self.bytes_copied += length
        return ERR_NONE


class DmaIntxPci(DmaDemo):
    """0309:1989 Broiler-DMA-intX-base: completion by INTx after 5 s."""

    def __init__(self, *, memory: GuestMemory, irq: IrqLine, schedule: Schedule, delay: float = 5.0) -> None:
        super().__init__(
            vendor_id=0x0309,
            device_id=0x1989,
            name="dma-intx",
            memory=memory,
            irq_kind=IrqKind.INTX,
            schedule=schedule,
            delay=delay,
            irq=irq,
        )


class DmaMsiPci(DmaDemo):
    """1024:1991 Broiler-DMA-msi-base: completion by MSI after 5 s."""

    def __init__(self, *, memory: GuestMemory, msi_sink: MsiSink, schedule: Schedule, delay: float = 5.0) -> None:
        super().__init__(
            vendor_id=0x1024,
            device_id=BROILER_DEVICE,
            name="dma-msi",
            memory=memory,
            irq_kind=IrqKind.MSI,
            schedule=schedule,
            delay=delay,
            msi_sink=msi_sink,
        )


class DmaMsixPci(DmaDemo):
    """1026:1991 Broiler-DMA-msix-base: completion by MSI-X entry 0 after 5 s."""

    def __init__(self, *, memory: GuestMemory, msi_sink: MsiSink, schedule: Schedule, delay: float = 5.0) -> None:
        super().__init__(
            vendor_id=0x1026,
            device_id=BROILER_DEVICE,
            name="dma-msix",
            memory=memory,
            irq_kind=IrqKind.MSIX,
            schedule=schedule,
            delay=delay,
            msi_sink=msi_sink,
        )


class DmaBufPci(DmaDemo):
    """1004:1991 Broiler-DMA-BUF-base: 1 MiB buffer, MSI-X, no delay."""

    def __init__(self, *, memory: GuestMemory, msi_sink: MsiSink, schedule: Schedule, delay: float = 0.0) -> None:
        super().__init__(
            vendor_id=0x1004,
            device_id=BROILER_DEVICE,
            name="dma-buf",
            memory=memory,
            irq_kind=IrqKind.MSIX,
            schedule=schedule,
            delay=delay,
            msi_sink=msi_sink,
            buffer_size=BIG_BUFFER,
            preload=b"",
        )
