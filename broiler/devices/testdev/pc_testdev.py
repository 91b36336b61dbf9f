"""QEMU's pc-testdev (hw/misc/pc-testdev.c), the ISA test device kvm-unit-tests drives.

Four register blocks, each its own Device because they sit on unrelated ranges:

========================  ==================  ==============================================
0xE0-0xE3 (ports)         ``PcTestdevLatch``  32-bit scratch latch: a w-byte access at
                                              0xE0+k reads/replaces bytes k..k+w-1
0xE8-0xEB (ports)         the same instance   the same latch (QEMU splits accesses into
                                              bytes there; the result is identical)
0xE4-0xE7 (ports)         ``PcTestdevFlush``  32-bit write of a guest-physical address:
                                              ``flush_page(addr & ~0xFFF)``; reads 0
0x2000-0x2017 (ports)     ``PcTestdevIrq``    byte write v at 0x2000+n: line n's
                                              ``set_level(v != 0)``; reads 0
0xFF000000 + 64 KiB       ``PcTestdevIomem``  RAM-like MMIO (trapped, not a memslot): reads
                                              return what was written, widths 1/2/4/8
========================  ==================  ==============================================

Unaligned accesses inside a block work (checked under QEMU 7.2 with KVM: a 16-bit write at 0xE1
replaces latch bytes 1-2, and the same holds in the MMIO window). Invalid widths are dropped and
counted as guest errors: a flush write that is not 32-bit, an IRQ write that is not 8-bit. Accesses
that run past the end of a block never reach the device (the bus treats them as unmapped), where
QEMU would split them across the neighbouring blocks.

Difference from QEMU: lines 16-23 (0x2010-0x2017) work here and drive GSIs 16-23 of the IOAPIC;
QEMU maps 0x2000+n to ISA IRQ n and aborts on an assertion for n >= 16 (isa_get_irq).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...core.bus import Device, MmioBus, PioBus, all_ones
from ...core.irq import IrqLine
from ...core.state import STATELESS

LATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
LATCH_BYTE_PORT = 0xE8
BLOCK_SIZE = 4
IRQ_PORT = 0x2000
IRQ_LINES = 24
IOMEM_BASE = 0xFF00_0000
IOMEM_SIZE = 0x1_0000
PAGE_MASK = ~0xFFF & 0xFFFF_FFFF


class PcTestdevLatch(Device):
    name = "pc-testdev-ioport"
    state_fields = ("value:32",)

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return (self.value >> (8 * offset)) & all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        mask = all_ones(size) << (8 * offset)
        self.value = (self.value & ~mask) | ((value << (8 * offset)) & mask)


class PcTestdevFlush(Device):
    """The machine decides what "flush" means (QEMU: mprotect the page to make KVM re-fault it)."""

    name = "pc-testdev-flush-page"
    state_fields = STATELESS  # a flush is done when written

    def __init__(self, flush_page: Callable[[int], None]) -> None:
        super().__init__()
        self._flush_page = flush_page
        self.flushes = 0

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset != 0:
            self.guest_error(f"{size}-byte write at +{offset} (only 32-bit writes at 0xE4 are valid)")
            return
        self.flushes += 1
        self._flush_page(value & PAGE_MASK)


class PcTestdevIrq(Device):
    name = "pc-testdev-irq-line"
    state_fields = ("levels",)

    def __init__(self, lines: Sequence[IrqLine | None]) -> None:
        super().__init__()
        self._lines = list(lines)
        self.levels = bytearray(len(self._lines))  # what the guest last wrote to each line (0 or 1)

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.guest_error(f"{size}-byte write (IRQ lines take byte writes)")
            return
        line = self._lines[offset] if offset < len(self._lines) else None
        if line is not None:
            self.levels[offset] = 1 if value else 0
            line.set_level(bool(value))

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        for n, line in enumerate(self._lines):
            self.levels[n] = 1 if self.levels[n] else 0
            if line is not None and self.levels[n]:
                line.set_level(True)  # a fresh machine's lines are low


class PcTestdevIomem(Device):
    name = "pc-testdev-iomem"
    state_fields = ("buf",)

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray(IOMEM_SIZE)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.buf[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.buf[offset : offset + size] = (value & all_ones(size)).to_bytes(size, "little")


@dataclass(frozen=True, slots=True)
class PcTestdev:
    latch: PcTestdevLatch
    flush: PcTestdevFlush
    irq: PcTestdevIrq
    iomem: PcTestdevIomem

    @classmethod
    def create(cls, *, lines: Sequence[IrqLine | None], flush_page: Callable[[int], None]) -> PcTestdev:
        """``lines[n]`` is what a write to 0x2000+n drives (None: not wired)."""
        return cls(PcTestdevLatch(), PcTestdevFlush(flush_page), PcTestdevIrq(lines), PcTestdevIomem())

    def regions(self) -> list[tuple[str, int, int, Device, str]]:
        """(bus "pio"/"mmio", base, size, device, region name) for each of the five regions."""
        return [
            ("pio", LATCH_PORT, BLOCK_SIZE, self.latch, "pc-testdev-ioport"),
            ("pio", FLUSH_PORT, BLOCK_SIZE, self.flush, "pc-testdev-flush-page"),
            ("pio", LATCH_BYTE_PORT, BLOCK_SIZE, self.latch, "pc-testdev-ioport-byte"),
            ("pio", IRQ_PORT, IRQ_LINES, self.irq, "pc-testdev-irq-line"),
            ("mmio", IOMEM_BASE, IOMEM_SIZE, self.iomem, "pc-testdev-iomem"),
        ]


def register_pc_testdev(
    pio: PioBus, mmio: MmioBus, *, lines: Sequence[IrqLine | None], flush_page: Callable[[int], None]
) -> PcTestdev:
    """Create the device and put its five regions on the buses (owner "pc-testdev")."""
    dev = PcTestdev.create(lines=lines, flush_page=flush_page)
    for kind, base, size, device, name in dev.regions():
        (pio if kind == "pio" else mmio).register(base, size, device, owner="pc-testdev", name=name)
    return dev
