"""A root file system on virtio-blk: the ext4 image, the initramfs that mounts it, and reading it back.

Broiler boots its guest with ``root=/dev/vda rw rootfstype=ext4`` from a virtio-blk ``--rootfs``
image (spec §7.5, §8). Debian's kernels have virtio as modules, so the boot needs an initramfs:
its /init loads the virtio modules from the kernel's own package (kmod.py), waits for the root
device, mounts it and switch_roots into /sbin/init on the disk, a probe that prints the same report
as the plain probe initramfs and then uses the virtio devices: it writes a file on /, reads
/dev/hwrng and writes to /dev/hvc0. The image is built by `mkfs.ext4 -d DIR` (e2fsprogs, no root
needed) and read back with `debugfs` (no mount). docs/linux.md, "A root file system on virtio-blk".
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigError
from .initramfs import PROBE_DONE, PROBE_REPORT, NewcWriter
from .kmod import VIRTIO_MODULES, extract_modules

WROTE_PATH = "/broiler-wrote.txt"
WROTE_LINE = "broiler wrote this through virtio-blk"
HVC0_LINE = "broiler: hello on hvc0"

# The initramfs /init. {modules} is the load order. Progress goes to the console, so a boot that stops
# says where; every failure ends in "=== broiler: done" and a power-off, never a hang.
VIRTIO_INIT = r"""#!/bin/sh
# broiler virtio initramfs: load the virtio modules, mount the root disk, switch_root into it.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "broiler-initramfs: $*"; }
fail() { say "$*"; echo "=== broiler: root failed"; echo "=== broiler: done"; poweroff -f; }
root=/dev/vda fstype=ext4 mode=rw
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) fstype=${arg#rootfstype=} ;;
        ro | rw) mode=$arg ;;
    esac
done
for m in {modules}; do
    say "insmod $m"
    insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done
i=0
while [ ! -b "$root" ]; do
    [ $i -ge 30 ] && fail "no $root after $i tries"
    sleep 1
    i=$((i + 1))
done
say "mount $root ($fstype, $mode)"
mount -t "$fstype" -o "$mode" "$root" /newroot || fail "mount $root failed"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
say "switch_root to /sbin/init on $root"
exec switch_root /newroot /sbin/init
"""

# The probe on the disk. The initramfs moved proc, sysfs and devtmpfs over; mount them only when
# booted without it. Builtins wherever possible (fork+exec costs seconds under emulation).
ROOT_PROBE_INIT = (
    r"""#!/bin/sh
# broiler root-disk probe: the platform report, then use virtio-blk, virtio-rng and virtio-console.
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/bus ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
echo "=== broiler: root"
while read -r dev mnt fs opts rest; do [ "$mnt" = / ] && echo "$dev $fs ${opts%%,*}"; done < /proc/mounts
"""
    + f'echo "{WROTE_LINE}" > {WROTE_PATH} && echo "wrote {WROTE_PATH}"\n'
    + PROBE_REPORT
    + r"""echo "=== broiler: virtio"
for d in /sys/bus/pci/devices/*; do
    read -r vendor < "$d/vendor"
    [ "$vendor" = 0x1af4 ] || continue
    read -r device < "$d/device"
    drv=none
    for p in /sys/bus/pci/drivers/*; do [ -e "$p/${d##*/}" ] && drv=${p##*/}; done
    echo "pci ${d##*/} $vendor $device $drv"
done
for v in /sys/bus/virtio/drivers/*/virtio*; do
    [ -e "$v/device" ] || continue
    read -r id < "$v/device"
    drv=${v%/*}
    echo "virtio ${v##*/} $id ${drv##*/}"
done
echo "=== broiler: hwrng"
read -r cur < /sys/class/misc/hw_random/rng_current
echo "current $cur"
timeout 120 xxd -p -c 64 -l 64 /dev/hwrng > /tmp/hwrng.hex
hex=
read -r hex < /tmp/hwrng.hex
echo "bytes $((${#hex} / 2)) $hex"
echo "=== broiler: hvc0"
"""
    + f'if echo "{HVC0_LINE}" > /dev/hvc0; then echo "hvc0 write ok"; else echo "hvc0 write failed"; fi\n'
    + r"""echo "=== broiler: sync"
sync && echo "synced"
mount -o remount,ro / && echo "remounted / read-only"
"""
    + PROBE_DONE
)

INITRAMFS_APPLETS = ("sh", "mount", "insmod", "sleep", "switch_root", "poweroff", "cat", "ls", "dmesg")
ROOT_APPLETS = ("sh", "mount", "umount", "sync", "timeout", "xxd", "poweroff", "setsid", "cttyhack", "cat", "ls")
ROOT_DIRS = ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root")


def _check_busybox(busybox: bytes) -> None:
    if not busybox.startswith(b"\x7fELF"):
        raise ConfigError("busybox is not an ELF executable")


def build_virtio_initramfs(busybox: bytes, modules: Sequence[tuple[str, bytes]], *, compress: bool = False) -> bytes:
    """newc archive: busybox, the modules as /lib/modules/<name>.ko (in load order) and VIRTIO_INIT."""
    _check_busybox(busybox)
    w = NewcWriter()
    for d in ("bin", "sbin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        w.add_dir(d)
    w.add_char_device("dev/console", 5, 1)
    w.add_char_device("dev/null", 1, 3, 0o666)
    w.add_file("bin/busybox", busybox, 0o755)
    for applet in INITRAMFS_APPLETS:
        w.add_symlink(f"bin/{applet}", "busybox")
    for name, ko in modules:
        w.add_file(f"lib/modules/{name}.ko", ko)
    init = VIRTIO_INIT.replace("{modules}", " ".join(name for name, _ in modules))
    w.add_file("init", init.encode(), 0o755)
    archive = w.finish()
    return gzip.compress(archive, mtime=0) if compress else archive


def virtio_initramfs_from_deb(busybox: bytes, kernel_deb: bytes, *, compress: bool = False) -> tuple[str, bytes]:
    """(kernel version, initramfs) with the virtio modules of this linux-image .deb."""
    km = extract_modules(kernel_deb)
    order = km.load_order(VIRTIO_MODULES)
    return km.version, build_virtio_initramfs(busybox, [(m, km.files[m]) for m in order], compress=compress)


# e2fsprogs installs into /sbin, which a non-root user's PATH often lacks on Debian.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin")


def _tool(name: str) -> str:
    found = shutil.which(name) or next((p for d in SBIN_DIRS if (p := shutil.which(name, path=d))), None)
    if found is None:
        raise ConfigError(f"{name} not found: apt-get install e2fsprogs")
    return found


def _run(cmd: list[str], what: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    """Run an e2fsprogs tool; a missing tool or a failure is one ConfigError line."""
    proc = subprocess.run([_tool(cmd[0]), *cmd[1:]], capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode not in ok:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [b"no output"]
        raise ConfigError(f"{what} failed (status {proc.returncode}): {last[0].decode(errors='replace')}")
    return proc


def build_rootfs_image(busybox: bytes, image: Path, *, size_mib: int = 32, init: str = ROOT_PROBE_INIT) -> None:
    """An ext4 image holding busybox, its applet links and ``init`` as /sbin/init; no root needed.

    The files keep the caller's uid in the image (mkfs.ext4 -d copies it); the guest runs as root
    whatever the owner, so that does not matter here."""
    _check_busybox(busybox)
    with tempfile.TemporaryDirectory(prefix="broiler-rootfs-") as tmp:
        root = Path(tmp)
        for d in ROOT_DIRS:
            (root / d).mkdir()
        (root / "bin/busybox").write_bytes(busybox)
        (root / "bin/busybox").chmod(0o755)
        for applet in ROOT_APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "sbin/init").write_text(init)
        (root / "sbin/init").chmod(0o755)
        image.unlink(missing_ok=True)  # mke2fs keeps an existing file's size; start from nothing
        cmd = ["mkfs.ext4", "-q", "-F", "-L", "broiler-root", "-E", "root_owner=0:0", "-d", str(root)]
        _run([*cmd, str(image), f"{size_mib}M"], f"mkfs.ext4 {image}")


def read_image_file(image: Path, path: str) -> bytes:
    """A file out of an ext2/3/4 image without mounting it (debugfs), e.g. what a guest wrote.

    debugfs reads only the file system's home blocks. A guest that did not unmount cleanly may have
    left its last metadata in the journal, so then the journal is replayed first, on a copy."""
    with tempfile.TemporaryDirectory(prefix="broiler-debugfs-") as tmp:
        features = _run(["dumpe2fs", "-h", str(image)], f"dumpe2fs {image}").stdout
        if b"needs_recovery" in features:
            copy = Path(tmp) / "replayed.img"
            shutil.copyfile(image, copy)
            _run(["e2fsck", "-fy", str(copy)], f"e2fsck (journal replay) of {image}", ok=(0, 1, 2))
            image = copy
        proc = _run(["debugfs", "-R", f"cat {path}", str(image)], f"debugfs {image}")
    if b"File not found" in proc.stderr:
        raise FileNotFoundError(f"{path} is not in {image}")
    return proc.stdout
