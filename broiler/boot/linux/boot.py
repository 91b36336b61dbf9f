"""One call that puts a Linux kernel, its initrd, command line and firmware tables into guest RAM and
says how to enter it. The machine then applies ``LinuxBoot.entry`` to vCPU 0 (see docs/linux.md).

Entry methods:

- ``pvh``: vmlinux (given, or extracted from a bzImage) at its physical addresses, entered at its
  PVH note in 32-bit mode with EBX = hvm_start_info. Measured to work on this host's KVM-PVM.
- ``vmlinux64``: the same vmlinux entered at e_entry (startup_64) with the 64-bit boot protocol and a
  zero page, as firecracker does.
- ``bzimage64``: the bzImage's protected-mode part at its preferred address, entered at +0x200 with
  the 64-bit boot protocol; the kernel decompresses itself (slow under instruction emulation).
- ``auto``: ``pvh`` if the kernel has the note, else ``vmlinux64``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...core.memory import GuestMemory
from ...errors import ConfigError
from ..acpi import build_acpi
from ..elf import ElfFile
from ..firmware import PciIrq, cpus
from . import layout
from .bootparams import build_zero_page, encode_cmdline, synthetic_setup_header
from .bzimage import BzImage, detect_compression, extract_vmlinux, is_bzimage, parse_bzimage
from .elf import load_segments, parse_elf, pvh_entry
from .entry import EntryState, long_mode_entry_state, pvh_entry_state
from .mptable import build_mptable
from .pvh import build_start_info

ENTRY_METHODS = ("auto", "pvh", "vmlinux64", "bzimage64")


@dataclass(frozen=True, slots=True)
class LinuxBoot:
    entry: EntryState
    method: str  # the resolved entry method
    description: str  # one line for the log: what was loaded how
    kernel_range: tuple[int, int]  # [start, end) the kernel may use (init_size included)
    initrd_range: tuple[int, int] | None  # (addr, size)
    cmdline_addr: int
    zero_page_addr: int
    mptable_addr: int
    rsdp_addr: int


def _write(mem: GuestMemory, gpa: int, data: bytes, what: str) -> None:
    if not mem.contains(gpa, len(data)):
        raise ConfigError(
            f"{what} ({len(data)} bytes at {gpa:#x}) does not fit in guest RAM: give the guest more memory (-m)"
        )
    mem.write(gpa, data)


def _kernel_images(kernel: bytes, name: str) -> tuple[BzImage | None, ElfFile | None, str]:
    """(bzImage or None, vmlinux or None, description) without extracting anything yet."""
    if kernel.startswith(b"\x7fELF"):
        return None, parse_elf(kernel, name), "ELF vmlinux"
    if is_bzimage(kernel):
        bz = parse_bzimage(kernel, name)
        return bz, None, f"bzImage (boot protocol {bz.protocol_text}, {detect_compression(bz.payload)})"
    raise ConfigError(f"{name}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)")


def prepare_linux_boot(
    mem: GuestMemory,
    kernel: bytes,
    *,
    cmdline: str,
    ncpus: int = 1,
    initrd: bytes | None = None,
    pci_irqs: Sequence[PciIrq] = (),
    reserved_io: Sequence[tuple[int, int]] = (),
    method: str = "auto",
    name: str = "kernel",
    hpet: bool = False,
) -> LinuxBoot:
    """Load everything into ``mem`` and return the entry state for vCPU 0 (APs wait for INIT/SIPI).

    Raises ConfigError (one line) for bad kernels, an initrd that does not fit, an over-long command
    line, or a method the kernel cannot do."""
    bz, elf, desc, method = _kernel_for_method(kernel, name, method)
    header = bz.setup_header if bz else synthetic_setup_header()
    cmdline_max = min(bz.cmdline_size if bz else 2047, layout.CMDLINE_MAX - 1)
    cmdline_bytes = encode_cmdline(cmdline, cmdline_max)
    kernel_range, rip = _load_kernel(mem, bz, elf, method, name)
    initrd_range = _load_initrd(mem, initrd, bz, kernel_range[1])
    e820 = mem.map.e820()
    rsdp_addr = _write_firmware_tables(mem, ncpus, pci_irqs, reserved_io, hpet=hpet)
    _write(mem, layout.CMDLINE_ADDR, cmdline_bytes, "the command line")
    zp = build_zero_page(
        setup_header=header,
        cmdline_addr=layout.CMDLINE_ADDR,
        e820=e820,
        initrd_addr=initrd_range[0] if initrd_range else 0,
        initrd_size=initrd_range[1] if initrd_range else 0,
        rsdp_addr=rsdp_addr,
    )
    _write(mem, layout.ZERO_PAGE_ADDR, zp, "the zero page")
    if method == "pvh":
        for gpa, data in build_start_info(
            cmdline_addr=layout.CMDLINE_ADDR, e820=e820, initrd=initrd_range, rsdp_addr=rsdp_addr
        ):
            _write(mem, gpa, data, "hvm_start_info")
        entry = pvh_entry_state(rip, layout.PVH_START_INFO_ADDR)
    else:
        entry = long_mode_entry_state(rip, layout.ZERO_PAGE_ADDR)
    for gpa, data in entry.memory:
        _write(mem, gpa, data, "boot page tables")
    return LinuxBoot(
        entry=entry,
        method=method,
        description=f"{desc}, entered via {method}",
        kernel_range=kernel_range,
        initrd_range=initrd_range,
        cmdline_addr=layout.CMDLINE_ADDR,
        zero_page_addr=layout.ZERO_PAGE_ADDR,
        mptable_addr=layout.MPTABLE_ADDR,
        rsdp_addr=rsdp_addr,
    )


def _kernel_for_method(kernel: bytes, name: str, method: str) -> tuple[BzImage | None, ElfFile | None, str, str]:
    """The bzImage and/or ELF to load for ``method`` (``auto`` resolved), and a description."""
    if method not in ENTRY_METHODS:
        raise ConfigError(f"unknown boot method {method!r} (use one of {', '.join(ENTRY_METHODS)})")
    bz, elf, desc = _kernel_images(kernel, name)
    if method == "bzimage64" and bz is None:
        raise ConfigError(f"{name}: boot method bzimage64 needs a bzImage, this is an ELF vmlinux")
    if method != "bzimage64" and elf is None:
        assert bz is not None
        elf = parse_elf(extract_vmlinux(bz, name), name + " (extracted vmlinux)")
        desc += ", vmlinux extracted"
    if method == "auto":
        method = "pvh" if elf is not None and pvh_entry(elf) is not None else "vmlinux64"
    if method == "pvh" and (elf is None or pvh_entry(elf) is None):
        raise ConfigError(f"{name}: the kernel has no PVH entry note (CONFIG_PVH); use another boot method")
    return bz, elf, desc, method


def _load_kernel(
    mem: GuestMemory, bz: BzImage | None, elf: ElfFile | None, method: str, name: str
) -> tuple[tuple[int, int], int]:
    """Write the kernel; returns the RAM it needs ([start, end), bss and init_size included) and its RIP."""
    if method == "bzimage64":
        assert bz is not None
        if not bz.kernel_64:
            raise ConfigError(f"{name}: this bzImage has no 64-bit entry point (XLF_KERNEL_64)")
        load = bz.pref_address if bz.protocol >= 0x020A else layout.DEFAULT_KERNEL_ADDR
        kernel_end = load + max(bz.init_size, len(bz.protected_mode_kernel))
        if kernel_end > layout.low_ram_end(mem.map):
            raise ConfigError(f"{name}: the kernel needs RAM up to {kernel_end:#x}; give the guest more memory (-m)")
        _write(mem, load, bz.protected_mode_kernel, "the kernel")
        return (load, kernel_end), load + 0x200
    assert elf is not None
    kernel_range = load_segments(elf, mem, name)
    if bz is not None:  # the decompressed kernel still needs init_size from its start
        kernel_range = (kernel_range[0], max(kernel_range[1], kernel_range[0] + bz.init_size))
    entry_addr = pvh_entry(elf) if method == "pvh" else elf.entry
    assert entry_addr is not None
    return kernel_range, entry_addr


def _write_firmware_tables(
    mem: GuestMemory,
    ncpus: int,
    pci_irqs: Sequence[PciIrq],
    reserved_io: Sequence[tuple[int, int]],
    *,
    hpet: bool = False,
) -> int:
    """The MP table and the ACPI tables below 1 MiB; returns the RSDP's address."""
    cpu_list = cpus(ncpus)
    mp = build_mptable(cpu_list, pci_irqs, layout.MPTABLE_ADDR)
    if len(mp) > layout.MPTABLE_MAX:
        raise ConfigError(f"the MP table for {ncpus} CPUs does not fit its {layout.MPTABLE_MAX}-byte area")
    acpi = build_acpi(cpu_list, pci_irqs, layout.ACPI_ADDR, reserved_io=reserved_io, hpet=hpet)
    if layout.ACPI_ADDR + len(acpi.blob) > layout.ACPI_END:
        raise ConfigError(f"the ACPI tables for {ncpus} CPUs do not fit below 1 MiB")
    _write(mem, layout.MPTABLE_ADDR, mp, "the MP table")
    _write(mem, layout.ACPI_ADDR, acpi.blob, "the ACPI tables")
    return acpi.rsdp_addr


def _load_initrd(mem: GuestMemory, initrd: bytes | None, bz: BzImage | None, kernel_end: int) -> tuple[int, int] | None:
    """Write the initrd where the boot protocol allows; (address, size) or None without one."""
    if initrd is None:
        return None
    max_addr = bz.initrd_addr_max if bz else 0x7FFF_FFFF
    addr = layout.place_initrd(len(initrd), kernel_end=kernel_end, memory_map=mem.map, initrd_addr_max=max_addr)
    _write(mem, addr, initrd, "the initrd")
    return addr, len(initrd)
