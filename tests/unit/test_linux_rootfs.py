"""Kernel modules from a .deb, their load order, the virtio initramfs and the ext4 root image
(synthetic modules and packages, a fake busybox; no network, no root)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from broiler.boot.linux import kmod, rootfs
from broiler.boot.linux.initramfs import PROBE_INIT, PROBE_REPORT, parse_newc
from broiler.errors import ConfigError
from tests.unit.test_linux_initramfs import FAKE_BUSYBOX, make_deb

needs_e2fsprogs = pytest.mark.skipif(
    any(shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None for t in ("mkfs.ext4", "debugfs")),
    reason="e2fsprogs not installed",
)


def fake_ko(depends: str, name: str = "x") -> bytes:
    """An ELF64 relocatable with a .shstrtab and a .modinfo section, as modpost leaves them."""
    modinfo = f"license=GPL\0depends={depends}\0name={name}\0vermagic=6.1.0-99-cloud-amd64 SMP\0".encode()
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    modinfo_off, shstr_off = body_off, body_off + len(modinfo)
    shoff = shstr_off + len(shstrtab)
    shoff += -shoff % 8
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sh = struct.Struct("<IIQQQQIIQQ")
    sections = sh.pack(*[0] * 10)
    sections += sh.pack(1, 1, 2, 0, modinfo_off, len(modinfo), 0, 0, 1, 0)  # .modinfo, PROGBITS, ALLOC
    sections += sh.pack(10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)  # .shstrtab
    blob = ehdr + modinfo + shstrtab
    return blob + bytes(shoff - len(blob)) + sections


def test_modinfo_and_names() -> None:
    ko = fake_ko("virtio,virtio_ring", name="virtio_blk")
    info = kmod.modinfo(ko)
    assert info["name"] == "virtio_blk" and info["vermagic"].startswith("6.1.0-99")
    assert kmod.depends(ko) == ["virtio", "virtio_ring"]
    assert kmod.depends(fake_ko("")) == []
    assert kmod.module_name("lib/modules/v/kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    with pytest.raises(ConfigError, match="uncompressed"):
        kmod.module_name("virtio.ko.xz")
    with pytest.raises(ConfigError, match="not an ELF64"):
        kmod.modinfo(b"\x7fELF\x01" + bytes(100))


def test_load_order_dependencies_first_builtin_skipped() -> None:
    deps = {
        "virtio_ring": [],
        "virtio": ["virtio_ring"],
        "virtio_pci_modern_dev": [],
        "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio"],
        "virtio_blk": ["virtio", "virtio_ring"],
    }
    builtin = frozenset({"ext4", "jbd2"})
    order = kmod.load_order(["virtio_pci", "virtio_blk", "ext4"], deps, builtin)
    assert order == ["virtio_ring", "virtio_pci_modern_dev", "virtio", "virtio_pci", "virtio_blk"]
    for name in order:  # every module after all it depends on
        assert all(order.index(d) < order.index(name) for d in deps[name])


def test_load_order_errors() -> None:
    with pytest.raises(ConfigError, match="virtio_ring \\(needed by virtio\\) is neither"):
        kmod.load_order(["virtio"], {"virtio": ["virtio_ring"]}, frozenset())
    with pytest.raises(ConfigError, match="cycle"):
        kmod.load_order(["a"], {"a": ["b"], "b": ["a"]}, frozenset())


def _kernel_deb() -> bytes:
    base = "lib/modules/6.1.0-99-cloud-amd64/"
    mods = {
        "kernel/drivers/virtio/virtio_ring.ko": "",
        "kernel/drivers/virtio/virtio.ko": "virtio_ring",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko": "",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko": "",
        "kernel/drivers/virtio/virtio_pci.ko": "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
        "kernel/drivers/block/virtio_blk.ko": "virtio,virtio_ring",
        "kernel/drivers/char/hw_random/virtio-rng.ko": "virtio,virtio_ring",
        "kernel/drivers/char/virtio_console.ko": "virtio,virtio_ring",
        "kernel/drivers/net/virtio_net.ko": "virtio_ring,virtio,net_failover",
    }
    files = {base + path: fake_ko(dep, kmod.module_name(path)) for path, dep in mods.items()}
    files[base + "modules.builtin"] = b"kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/lib/crc16.ko\n"
    files["boot/vmlinuz-6.1.0-99-cloud-amd64"] = b"KERNEL"
    return make_deb(files)


def test_virtio_initramfs_from_deb() -> None:
    version, archive = rootfs.virtio_initramfs_from_deb(FAKE_BUSYBOX, _kernel_deb())
    assert version == "6.1.0-99-cloud-amd64"
    entries = {n: (m, d) for n, m, d in parse_newc(archive)}
    init = entries["init"][1].decode()
    want = (
        "virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci virtio_blk virtio_rng virtio_console"
    )
    assert f"for m in {want}; do" in init and "{modules}" not in init
    for name in want.split():
        assert kmod.modinfo(entries[f"lib/modules/{name}.ko"][1])["name"] == name
    assert "lib/modules/virtio_net.ko" not in entries  # only what the devices need
    assert entries["bin/busybox"][1] == FAKE_BUSYBOX and entries["bin/switch_root"][1] == b"busybox"
    assert "newroot" in entries and "exec switch_root /newroot /sbin/init" in init


def test_extract_modules_needs_builtin_list() -> None:
    with pytest.raises(ConfigError, match="modules.builtin"):
        kmod.extract_modules(make_deb({"lib/modules/6.1/kernel/virtio.ko": fake_ko("")}))


def test_root_probe_script() -> None:
    probe = rootfs.ROOT_PROBE_INIT
    assert PROBE_REPORT in probe and PROBE_REPORT in PROBE_INIT
    assert f'"{rootfs.WROTE_LINE}" > {rootfs.WROTE_PATH}' in probe
    for word in ("/dev/hwrng", "/dev/hvc0", "0x1af4", "=== broiler: virtio", "sync", "remount,ro", "poweroff -f"):
        assert word in probe
    assert probe.index("=== broiler: sync") < probe.index("=== broiler: done")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_scripts_parse() -> None:
    for script in (rootfs.ROOT_PROBE_INIT, rootfs.VIRTIO_INIT.replace("{modules}", "a b")):
        subprocess.run(["sh", "-n"], input=script.encode(), check=True)


@needs_e2fsprogs
def test_rootfs_image_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "rootfs.ext4"
    image.write_bytes(bytes(100 << 20))  # a bigger old file must not survive
    rootfs.build_rootfs_image(FAKE_BUSYBOX, image, size_mib=8)
    assert image.stat().st_size == 8 << 20
    assert rootfs.read_image_file(image, "/sbin/init") == rootfs.ROOT_PROBE_INIT.encode()
    assert rootfs.read_image_file(image, "/bin/busybox") == FAKE_BUSYBOX
    features = subprocess.run([rootfs._tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True).stdout
    assert "has_journal" in features and "extent" in features  # ext4, not ext2
    with pytest.raises(FileNotFoundError):
        rootfs.read_image_file(image, rootfs.WROTE_PATH)  # the guest writes it


def test_rootfs_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not an ELF"):
        rootfs.build_rootfs_image(b"#!/bin/sh", tmp_path / "x.ext4")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rootfs, "SBIN_DIRS", ())
    with pytest.raises(ConfigError, match="mkfs.ext4 not found: apt-get install e2fsprogs"):
        rootfs.build_rootfs_image(FAKE_BUSYBOX, tmp_path / "x.ext4")


@needs_e2fsprogs
def test_read_image_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(4096))
    with pytest.raises(ConfigError, match="dumpe2fs"):
        rootfs.read_image_file(bad, "/x")
