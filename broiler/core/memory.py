"""Guest physical memory: the seed's x86 memory map and host-backed RAM.

The map (seed, spec §1)::

    [0, min(ram, 3 GiB))            RAM (low)
    [0xC0000000, 0x100000000)       PCI hole: no RAM
        0xC1000000 + 16 MiB         PCI ECAM configuration window (buses 0-15)
        0xC2000000 .. 0xD0000000    PCI MMIO window (BARs, naturally aligned)
        0xD0000000 + 4 KiB          platform MMIO demo devices (seed §6.2)
        0xFEC00000 + 4 KiB          IOAPIC (in-kernel)
        0xFEE00000 + 4 KiB          local APIC (in-kernel)
        0xFFFBC000 + 16 KiB         KVM identity-map page and TSS (VMX needs them; reserved)
    [0x100000000, 4 GiB + ram - 3 GiB)   RAM (high), only when ram > 3 GiB

Guest RAM is one anonymous MAP_NORESERVE mapping per region, so a large guest costs nothing until it
touches its pages.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from ..errors import ConfigError, GuestMemoryError
from .bus import all_ones

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

LOW_RAM_LIMIT = 0xC000_0000  # end of low RAM = start of the PCI hole
PCI_HOLE_START = 0xC000_0000
PCI_HOLE_END = 0x1_0000_0000
HIGH_RAM_START = 0x1_0000_0000
PCI_ECAM_BASE = 0xC100_0000
PCI_ECAM_SIZE = 16 * MiB  # 16 buses x 1 MiB
PCI_MMIO_START = 0xC200_0000
PCI_MMIO_END = 0xD000_0000
PLATFORM_MMIO_BASE = 0xD000_0000  # the seed's MMIO demo devices
PLATFORM_MMIO_SIZE = 0x1000
# A page of the hole with nothing behind it, ever: a user-mode `syscall` is sent there on KVM-PVM so that
# its instruction fetch exits to broiler (broiler/emulate/syscall.py).
SYSCALL_TRAMPOLINE_GPA = 0xFEBF_F000
IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
LAPIC_BASE = 0xFEE0_0000
LAPIC_SIZE = 0x1000
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000  # one page, then the 3-page TSS
KVM_TSS_ADDR = 0xFFFB_D000
KVM_PRIVATE_SIZE = 0x4000

# Low-memory landmarks shared by the loaders.
EBDA_START = 0x9FC00
VGA_START = 0xA0000
BIOS_START = 0xF0000
HIGH_MEMORY = 0x100000  # 1 MiB: where kernels and flat64 images load

MIN_RAM = 4 * MiB

E820_RAM = 1
E820_RESERVED = 2


@dataclass(frozen=True, slots=True)
class MapRange:
    """A named half-open guest-physical range ``[start, end)``."""

    start: int
    end: int
    name: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class E820Entry:
    addr: int
    size: int
    type: int


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(text: str, *, what: str = "size") -> int:
    """'512M', '4G', '0x1000', '65536' → bytes. Raises ConfigError with one clear line."""
    units = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if s and s[-1] in units:
        mult = units[s[-1]]
        s = s[:-1]
    try:
        value = int(s, 0) if s.startswith("0X") else int(s)
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: use a number with an optional K, M, G or T suffix") from None
    if value < 0:
        raise ConfigError(f"bad {what} {text!r}: negative")
    return value * mult


class MemoryMap:
    """Where RAM is, what is reserved, and the e820 table, for a given RAM size."""

    def __init__(self, ram_size: int) -> None:
        if ram_size < MIN_RAM:
            raise ConfigError(f"guest RAM of {ram_size} bytes is too small: broiler needs at least 4M")
        if ram_size % (4 * KiB):
            raise ConfigError(f"guest RAM size {ram_size:#x} is not a multiple of 4 KiB")
        limit = host_memory_bytes()
        if ram_size > limit:
            raise ConfigError(
                f"guest RAM of {format_size(ram_size)} exceeds this host's {format_size(limit)} of memory"
            )
        self.ram_size = ram_size
        low = min(ram_size, LOW_RAM_LIMIT)
        self.ram: list[MapRange] = [MapRange(0, low, "System RAM")]
        if ram_size > LOW_RAM_LIMIT:
            self.ram.append(MapRange(HIGH_RAM_START, HIGH_RAM_START + ram_size - LOW_RAM_LIMIT, "System RAM"))
        self.reserved: list[MapRange] = [
            MapRange(PCI_ECAM_BASE, PCI_ECAM_BASE + PCI_ECAM_SIZE, "PCI ECAM"),
            MapRange(PCI_MMIO_START, PCI_MMIO_END, "PCI Bus 0000:00"),
            MapRange(PLATFORM_MMIO_BASE, PLATFORM_MMIO_BASE + PLATFORM_MMIO_SIZE, "platform MMIO"),
            MapRange(IOAPIC_BASE, IOAPIC_BASE + IOAPIC_SIZE, "IOAPIC"),
            MapRange(LAPIC_BASE, LAPIC_BASE + LAPIC_SIZE, "Local APIC"),
            MapRange(KVM_IDENTITY_MAP_ADDR, KVM_IDENTITY_MAP_ADDR + KVM_PRIVATE_SIZE, "KVM TSS"),
        ]

    @property
    def ram_end(self) -> int:
        """One past the highest RAM address."""
        return self.ram[-1].end

    def e820(self) -> list[E820Entry]:
        """The firmware memory map, in address order (issue 6: low RAM, EBDA/BIOS reserved, RAM)."""
        low_end = self.ram[0].end
        entries = [
            E820Entry(0, EBDA_START, E820_RAM),
            E820Entry(EBDA_START, VGA_START - EBDA_START, E820_RESERVED),
            E820Entry(BIOS_START, HIGH_MEMORY - BIOS_START, E820_RESERVED),
            E820Entry(HIGH_MEMORY, low_end - HIGH_MEMORY, E820_RAM),
        ]
        if len(self.ram) > 1:
            entries.append(E820Entry(self.ram[1].start, self.ram[1].size, E820_RAM))
        return entries

    def is_ram(self, gpa: int, size: int = 1) -> bool:
        return any(r.start <= gpa and gpa + size <= r.end for r in self.ram)


def format_size(n: int) -> str:
    for unit, scale in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    if n >= GiB:
        return f"{n / GiB:.1f}G"
    return f"{n} bytes"


_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


@dataclass(frozen=True, slots=True)
class FileBacking:
    """Guest RAM mapped from a file (a snapshot, docs/snapshot.md): region i starts at ``offsets[i]`` of the
    open file ``fd``. The mapping is MAP_PRIVATE: pages come from the file when the guest first touches
    them, and the guest's writes stay in this process (the file is never written through it)."""

    fd: int
    offsets: tuple[int, ...]


class GuestMemory:
    """Guest RAM, addressed by guest-physical address.

    Every access must lie wholly inside one RAM region; anything else raises GuestMemoryError. This
    is the only way device models (DMA) and loaders touch guest memory, so a bogus guest address can
    never reach host memory outside the guest's RAM. RAM is anonymous memory, or with ``backing`` a
    private mapping of a snapshot file (restored lazily, page by page, as the guest touches it).
    """

    def __init__(self, memory_map: MemoryMap, backing: FileBacking | None = None) -> None:
        self.map = memory_map
        self.backing = backing
        self.regions: list[tuple[int, int, mmap.mmap]] = []
        for i, r in enumerate(memory_map.ram):
            fd, flags, offset = -1, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, 0
            if backing is not None:
                fd, flags, offset = backing.fd, mmap.MAP_PRIVATE | _MAP_NORESERVE, backing.offsets[i]
            mm = mmap.mmap(fd, r.size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            self.regions.append((r.start, r.end, mm))

    def release_backing(self) -> None:
        """Close the snapshot file's descriptor (the mappings keep their own reference to the file)."""
        if self.backing is not None:
            os.close(self.backing.fd)
            self.backing = None

    def _locate(self, gpa: int, size: int) -> tuple[mmap.mmap, int]:
        if size < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest access at {gpa:#x} size {size}")
        for start, end, mm in self.regions:
            if start <= gpa and gpa + size <= end:
                return mm, gpa - start
        raise GuestMemoryError(f"guest-physical range [{gpa:#x}, {gpa + size:#x}) is not inside guest RAM")

    def contains(self, gpa: int, size: int) -> bool:
        return size >= 0 and any(start <= gpa and gpa + size <= end for start, end, _ in self.regions)

    def read(self, gpa: int, size: int) -> bytes:
        mm, off = self._locate(gpa, size)
        return mm[off : off + size]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        mm, off = self._locate(gpa, len(data))
        mm[off : off + len(data)] = data

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        mm, off = self._locate(gpa, size)
        chunk = bytes([byte]) * min(size, MiB)
        done = 0
        while done < size:
            n = min(len(chunk), size - done)
            mm[off + done : off + done + n] = chunk[:n]
            done += n

    def view(self, gpa: int, size: int) -> memoryview:
        mm, off = self._locate(gpa, size)
        return memoryview(mm)[off : off + size]

    def note(self, rw: str, gpa: int, size: int) -> None:
        """A device moved bytes through a ``view`` (``rw`` "r": it is about to read them, "w": it wrote them).
        Nothing to do here; ``core/observe.DeviceMemory`` reports them as DMA while observed (--record)."""

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.read(gpa, size), "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.write(gpa, (value & all_ones(size)).to_bytes(size, "little"))
