"""A pure-Python cpio "newc" writer and the probe initramfs broiler's Linux tests boot.

newc (what the kernel unpacks, Documentation/driver-api/early-userspace/buffer-format.rst): per
entry a 110-byte ASCII header "070701" + 13 eight-digit hex fields (ino, mode, uid, gid, nlink,
mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize incl. NUL, check = 0), the
NUL-terminated name padded to a multiple of 4 (counting from the header start), the data padded
to 4; the archive ends with the entry "TRAILER!!!".
"""

from __future__ import annotations

import gzip
import stat

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"

# The platform report both probes print (this /init and the one on the virtio-blk root file system,
# rootfs.py): everything a broiler boot test looks at, between markers a test can find. Shell builtins
# only (read, echo, [): where the kernel runs in an instruction emulator every fork+exec costs seconds.
PROBE_REPORT = r"""show() { while IFS= read -r line; do echo "$line"; done < "$1"; }
echo "=== broiler: /proc/iomem"
show /proc/iomem
echo "=== broiler: /proc/ioports"
show /proc/ioports
echo "=== broiler: /proc/interrupts"
show /proc/interrupts
n=0
while read -r key rest; do [ "$key" = processor ] && n=$((n + 1)); done < /proc/cpuinfo
echo "=== broiler: cpus $n"
echo "=== broiler: pci devices"
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    read -r vendor < "$d/vendor"; read -r device < "$d/device"; read -r class < "$d/class"
    echo "${d##*/} $vendor $device $class"
done
"""

PROBE_DONE = r"""echo "=== broiler: done"
read -r cmdline < /proc/cmdline
case " $cmdline " in
    *" broiler.shell "*) exec setsid cttyhack sh ;;
esac
poweroff -f
"""

# What /init runs: the mounts, the report, then power off.
PROBE_INIT = (
    r"""#!/bin/sh
# broiler probe init: report the platform as Linux sees it, then power off.
# Shell builtins only (read, echo, [) after the mounts: where the kernel runs in an instruction
# emulator every fork+exec costs seconds, a builtin nothing.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
"""
    + PROBE_REPORT
    + PROBE_DONE
)
# busybox applets /init uses, installed as symlinks so nothing has to run `busybox --install`.
APPLETS = (
    "sh",
    "mount",
    "cat",
    "echo",
    "grep",
    "poweroff",
    "reboot",
    "ls",
    "setsid",
    "cttyhack",
    "sleep",
    "dmesg",
    "lspci",
    "uname",
    "halt",
)


class NewcWriter:
    """Collects entries and renders a newc archive. Directories must be added before their contents."""

    def __init__(self, mtime: int = 0) -> None:
        self._out = bytearray()
        self._ino = 1
        self._mtime = mtime
        self._names: set[str] = set()
        self._finished = False

    def _entry(
        self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        if self._finished:
            raise ValueError("archive already finished")
        name = name.strip("/") or "."
        if name in self._names and name != TRAILER:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        raw = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, self._mtime, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        self._ino += 1
        hdr = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out += hdr + raw
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        if not self._finished:
            self._entry(TRAILER, 0)
            self._finished = True
        return bytes(self._out)


def parse_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry before the trailer; for tests and sanity checks."""
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad newc magic at {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = f[1], f[6], f[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return out
        out.append((name, mode, data[data_start : data_start + filesize]))
        pos = data_start + filesize + (-filesize % 4)


def build_probe_initramfs(busybox: bytes, *, init: str = PROBE_INIT, compress: bool = False) -> bytes:
    """An initramfs with a static busybox, its applet links, /dev/console and the probe /init.

    Uncompressed by default: under an instruction-emulating KVM every byte the kernel inflates costs
    real time, and the archive is only ~2 MiB."""
    if not busybox.startswith(b"\x7fELF"):
        raise ValueError("busybox is not an ELF executable")
    w = NewcWriter()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc"):
        w.add_dir(d)
    w.add_char_device("dev/console", 5, 1)  # the kernel opens it before devtmpfs is mounted
    w.add_char_device("dev/null", 1, 3, 0o666)
    w.add_file("bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        w.add_symlink(f"bin/{applet}", "busybox")
    w.add_file("init", init.encode(), 0o755)
    archive = w.finish()
    return gzip.compress(archive, mtime=0) if compress else archive
