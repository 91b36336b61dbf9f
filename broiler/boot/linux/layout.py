"""Where the Linux boot pieces go in guest-physical memory.

Low memory (all inside the e820 RAM range [0, 0x9FC00) unless noted)::

    0x00000 - 0x004FF   real-mode IVT and BDA: left zero (no BIOS; Linux copes, see docs/linux.md)
    0x00500 - 0x00527   GDT: null, null, __BOOT_CS 0x10, __BOOT_DS 0x18, busy TSS 0x20 (for TR)
    0x01000 - 0x04FFF   boot stack, RSP/ESP = 0x5000 (neither entry needs one; given for safety)
    0x06000 - 0x06FFF   PVH hvm_start_info (0x6000), module list (0x6040), memory map (0x6100)
    0x07000 - 0x07FFF   zero page (struct boot_params) for the 64-bit entry
    0x09000 - 0x0EFFF   identity page tables: PML4 0x9000, PDPT 0xA000, 4 page directories
                        0xB000-0xEFFF with 2 MiB pages mapping [0, 4 GiB)
    0x20000 - 0x2FFFF   kernel command line (NUL-terminated, at most the kernel's cmdline_size)
    0x9FC00 - 0x9FFFF   EBDA (e820 reserved): unused
    0xF0000 - 0xF0FFF   MP floating pointer (0xF0000) and MP configuration table (0xF0010)
    0xF1000 - 0xFCFFF   ACPI: RSDP at 0xF1000 (Linux scans 0xE0000-0xFFFFF for it), then the tables
    0xFD000 - 0xFFFFF   three spare page-table pages for the syscall trampoline (KVM-PVM only;
                        broiler/emulate/syscall.py)
    0x100000 ...        kernel (bzImage protected-mode part at pref_address or 1 MiB; vmlinux at
                        its PT_LOAD physical addresses, normally 16 MiB)
    top of low RAM      initrd, page aligned, ending below min(initrd_addr_max + 1, low RAM end)

The F-segment is e820-reserved in the seed's map, so the firmware tables there survive boot. Every
address below 1 MiB is chosen so nothing overlaps; tests/unit/test_linux_layout.py checks that.
"""

from __future__ import annotations

from ...core.memory import EBDA_START, HIGH_MEMORY, MemoryMap, MiB
from ...errors import ConfigError
from ..acpi import ACPI_ADDR, ACPI_END

PAGE = 0x1000

GDT_ADDR = 0x500
GDT_SIZE = 0x28  # 5 descriptors: null, null, CS, DS, TSS
BOOT_STACK_TOP = 0x5000
PVH_START_INFO_ADDR = 0x6000
PVH_MODLIST_ADDR = 0x6040
PVH_MEMMAP_ADDR = 0x6100
PVH_MEMMAP_MAX = (0x7000 - PVH_MEMMAP_ADDR) // 24  # hvm_memmap_table_entry is 24 bytes
ZERO_PAGE_ADDR = 0x7000
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # 4 page directories, one per GiB
PAGE_TABLES_END = 0xF000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000  # Linux's own limit (cmdline_size) is usually 2047
MPTABLE_ADDR = 0xF0000
MPTABLE_MAX = 0x1000
SYSCALL_TABLES_ADDR = 0xFD000  # page-table pages the syscall assist may hand to the guest
SYSCALL_TABLES = (0xFD000, 0xFE000, 0xFF000)

BOOT_CS = 0x10  # the selectors the boot protocol names (__BOOT_CS, __BOOT_DS)
BOOT_DS = 0x18

DEFAULT_KERNEL_ADDR = HIGH_MEMORY  # 1 MiB: where a bzImage goes when it cannot go to pref_address
INITRD_ALIGN = PAGE

# (start, end, what) of every fixed low-memory object, for the overlap test and the docs.
LOW_MEMORY_OBJECTS: tuple[tuple[int, int, str], ...] = (
    (GDT_ADDR, GDT_ADDR + GDT_SIZE, "GDT"),
    (BOOT_STACK_TOP - 0x4000, BOOT_STACK_TOP, "boot stack"),
    (PVH_START_INFO_ADDR, PVH_MODLIST_ADDR, "hvm_start_info"),
    (PVH_MODLIST_ADDR, PVH_MEMMAP_ADDR, "PVH module list"),
    (PVH_MEMMAP_ADDR, ZERO_PAGE_ADDR, "PVH memory map"),
    (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + PAGE, "zero page"),
    (PML4_ADDR, PAGE_TABLES_END, "page tables"),
    (CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX, "command line"),
    (MPTABLE_ADDR, MPTABLE_ADDR + MPTABLE_MAX, "MP table"),
    (ACPI_ADDR, ACPI_END, "ACPI tables"),
    (SYSCALL_TABLES_ADDR, HIGH_MEMORY, "syscall trampoline page tables"),
)


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


def low_ram_end(memory_map: MemoryMap) -> int:
    """End of the RAM that starts at 1 MiB (at most 3 GiB): kernels and initrds go there."""
    return memory_map.ram[0].end


def place_initrd(size: int, *, kernel_end: int, memory_map: MemoryMap, initrd_addr_max: int = 0x7FFF_FFFF) -> int:
    """Address for an initrd of ``size`` bytes: as high as allowed, page aligned, above the kernel.

    Boot protocol: the initrd must lie wholly below ``initrd_addr_max`` (the address of its last
    allowed byte); boot loaders put it as high as possible so the kernel's decompression has room.
    """
    if size <= 0:
        raise ConfigError("the initrd is empty")
    top = min(initrd_addr_max + 1, low_ram_end(memory_map))
    addr = align_down(top - size, INITRD_ALIGN)
    if addr < align_up(kernel_end, INITRD_ALIGN):
        raise ConfigError(
            f"kernel (up to {kernel_end / MiB:.1f} MiB) and initrd ({size / MiB:.1f} MiB) "
            f"do not fit in guest RAM: give the guest more memory (-m)"
        )
    return addr


def check_low_layout() -> None:
    """Raise AssertionError if two fixed objects overlap or one leaves low RAM (a programming error)."""
    objs = sorted(LOW_MEMORY_OBJECTS)
    for (_s1, e1, n1), (s2, _e2, n2) in zip(objs, objs[1:], strict=False):
        assert e1 <= s2, f"{n1} overlaps {n2}"
    for s, e, n in objs:
        in_low_ram = e <= EBDA_START
        in_f_segment = s >= 0xF0000 and e <= HIGH_MEMORY
        assert in_low_ram or in_f_segment, f"{n} [{s:#x}, {e:#x}) is neither in low RAM nor in the F-segment"
