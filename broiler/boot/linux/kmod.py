"""Kernel modules out of a Debian linux-image .deb: which ones a boot needs, and in what order.

Debian's kernel packages ship /lib/modules/<version>/ without modules.dep: `depmod` writes it in the
package's postinst, which we never run. The same information is in every module's `.modinfo` section
(`depends=a,b`, written by modpost at build time, and what depmod's dependency list agrees with), so we
read that instead, together with modules.builtin, which the package does ship, to know what needs no
loading at all. Pure data, no root, no network.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ...errors import ConfigError
from .debian import deb_files

# What broiler's virtio devices need in the guest. ext4, jbd2, mbcache, crc16 and crc32c are built into
# Debian 12's kernels (checked against modules.builtin at build time, see load_order).
VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_rng", "virtio_console", "ext4")

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")


def module_name(path: str) -> str:
    """The name the kernel knows a module by: file name without .ko, '-' read as '_' (virtio-rng.ko)."""
    name = PurePosixPath(path).name
    if not name.endswith(".ko"):
        raise ConfigError(f"{path}: not an uncompressed kernel module (.ko)")
    return name.removesuffix(".ko").replace("-", "_")


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of a module's .modinfo section (a repeated key keeps its last value)."""
    if ko[:4] != b"\x7fELF" or len(ko) < _EHDR.size or ko[4] != 2:
        raise ConfigError("not an ELF64 kernel module")
    h = _EHDR.unpack_from(ko)
    shoff, shentsize, shnum, shstrndx = h[6], h[11], h[12], h[13]
    sections = [_SHDR.unpack_from(ko, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx]
    names = ko[strtab[4] : strtab[4] + strtab[5]]
    for sh in sections:
        name = names[sh[0] : names.index(b"\0", sh[0])]
        if name == b".modinfo":
            raw = ko[sh[4] : sh[4] + sh[5]]
            pairs = (s.decode(errors="replace").partition("=") for s in raw.split(b"\0") if b"=" in s)
            return {k: v for k, _, v in pairs}
    raise ConfigError("the module has no .modinfo section")


def depends(ko: bytes) -> list[str]:
    value = modinfo(ko).get("depends", "")
    return [d.replace("-", "_") for d in value.split(",") if d]


def parse_builtin(text: str) -> frozenset[str]:
    """modules.builtin ("kernel/fs/ext4/ext4.ko" per line) as module names."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class KernelModules:
    """One kernel's loadable modules (name -> .ko bytes) and the names built into its image."""

    version: str
    files: dict[str, bytes] = field(repr=False)
    builtin: frozenset[str] = field(repr=False)

    def load_order(self, wanted: Iterable[str]) -> list[str]:
        """The modules to insmod for ``wanted``, each after its dependencies; built-in ones left out."""
        deps = {name: depends(ko) for name, ko in self.files.items()}
        return load_order(wanted, deps, self.builtin)


def load_order(wanted: Iterable[str], deps: dict[str, list[str]], builtin: frozenset[str]) -> list[str]:
    """Depth-first, dependencies first, each module once; a missing module or a cycle is a ConfigError."""
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, needed_by: str | None) -> None:
        if name in builtin or state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ConfigError(f"kernel modules depend on each other in a cycle through {name}")
        if name not in deps:
            why = f" (needed by {needed_by})" if needed_by else ""
            raise ConfigError(f"kernel module {name}{why} is neither in the package nor built in")
        state[name] = "visiting"
        for dep in deps[name]:
            visit(dep, name)
        state[name] = "done"
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), None)
    return order


def extract_modules(deb: bytes) -> KernelModules:
    """Every .ko and modules.builtin of a linux-image .deb (data.tar.xz or .zst), without dpkg."""
    files = deb_files(
        deb, lambda p: p.startswith("lib/modules/") and (p.endswith(".ko") or p.endswith("/modules.builtin"))
    )
    builtin_paths = [p for p in files if p.endswith("/modules.builtin")]
    if not builtin_paths:
        raise ConfigError("the kernel package has no lib/modules/<version>/modules.builtin")
    version = builtin_paths[0].split("/")[2]
    builtin = parse_builtin(files.pop(builtin_paths[0]).decode())
    modules = {module_name(p): ko for p, ko in files.items() if p.split("/")[2] == version}
    return KernelModules(version, modules, builtin)
