#!/usr/bin/env python3
"""Build the flat64 guest images shipped in broiler/guests/.

Each ``guests/<name>.c`` or ``guests/<name>.S`` becomes ``broiler/guests/<name>.bin``, linked with the
toolkit in ``guests/lib`` (start.S, lib.c, and any other lib/*.c / lib/*.S).

Each ``guests/multiboot/<name>.c`` becomes a Multiboot test kernel ``broiler/guests/<name>.elf``: linked
with ``guests/multiboot/boot.S`` (Multiboot header, 32-bit entry, switch to long mode, AP trampoline) and
the toolkit's interrupt stubs ``guests/lib/isr.S`` (which call the kernel's ``isr_dispatch``), and written as
ELF32 so QEMU's ``-kernel`` loads the same file (it refuses ELF64 Multiboot images). A kernel that wants more
names it in its header comment with a line ``build-with: lib/lib.c lib/pci.c multiboot/lib/virtio.c ...``
(paths under ``guests/``): only those are compiled (with ``guests/multiboot/lib`` on the include path) and
linked into it, so a kernel pays for what it uses. The images are committed
so ``broiler run`` needs no compiler; ``tests/unit/test_guest_images.py`` rebuilds them into a temporary
folder and checks they match byte for byte.

    python guests/build.py            # rebuild in place
    python guests/build.py --out DIR  # build elsewhere

Each ``examples/<name>.c`` becomes ``examples/<name>.bin`` the same way (the API examples' guests, docs/api.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIB = HERE / "lib"
DEFAULT_OUT = HERE.parent / "broiler" / "guests"

CFLAGS = [
    "-m64",
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-fno-exceptions",
    "-nostdlib",
    "-Wall",
    "-Werror",
    f"-I{LIB}",
    # one section per function and object, so --gc-sections drops the toolkit parts a guest does not use
    "-ffunction-sections",
    "-fdata-sections",
]
LDFLAGS = [
    "-m",
    "elf_x86_64",
    "--build-id=none",
    "-nostdlib",
    "-static",
    "--gc-sections",
    "-z",
    "noexecstack",
    "--no-warn-rwx-segments",
]
MULTIBOOT = HERE / "multiboot"
# "build-with: a.c b.S" in a Multiboot kernel's source: the toolkit files (under guests/) it links.
BUILD_WITH = re.compile(r"^\W*build-with:\s*(.+?)\s*(?:\*/)?$", re.M)
EXAMPLES = HERE.parent / "examples"  # examples/*.c: the guests of the API examples (docs/api.md)


def guest_sources() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if p.suffix in (".c", ".S") and p.is_file())


def lib_sources() -> list[Path]:
    return sorted(p for p in LIB.iterdir() if p.suffix in (".c", ".S"))


def _compile(src: Path, obj: Path, extra: tuple[str, ...] = ()) -> None:
    cmd = ["gcc", *CFLAGS, *extra, "-c", str(src), "-o", str(obj)]
    subprocess.run(cmd, check=True)


def _build_multiboot(tmp: Path, out: Path) -> list[Path]:
    if not (MULTIBOOT / "boot.S").exists():
        return []
    common = [tmp / "mb_boot.o", tmp / "mb_isr.o"]
    _compile(MULTIBOOT / "boot.S", common[0])
    _compile(LIB / "isr.S", common[1])
    built = []
    toolkit: dict[str, Path] = {}
    include = (f"-I{MULTIBOOT / 'lib'}",)
    for src in sorted(MULTIBOOT.glob("*.c")):
        obj = tmp / f"mb_{src.stem}.o"
        elf = tmp / f"mb_{src.stem}.elf"
        extra = []
        for match in BUILD_WITH.finditer(src.read_text()):
            for name in match.group(1).split():
                if name not in toolkit:
                    toolkit[name] = tmp / f"mbkit_{len(toolkit)}_{Path(name).stem}.o"
                    _compile(HERE / name, toolkit[name], include)
                extra.append(toolkit[name])
        _compile(src, obj, include)
        subprocess.run(
            [
                "ld",
                *LDFLAGS,
                "-z",
                "max-page-size=0x1000",
                "-T",
                str(MULTIBOOT / "link.ld"),
                "-o",
                str(elf),
                *map(str, common),
                str(obj),
                *map(str, extra),
            ],
            check=True,
        )
        image = out / f"{src.stem}.elf"
        subprocess.run(["objcopy", "-O", "elf32-i386", str(elf), str(image)], check=True)
        built.append(image)
    return built


def _compile_lib(tmp: Path) -> list[Path]:
    lib_objs = []
    # start.S must come first so _start is the image's first byte (the linker script also
    # places .text.start first; both keep the contract obvious).
    for src in sorted(lib_sources(), key=lambda p: (p.name != "start.S", p.name)):
        obj = tmp / f"lib_{src.stem}_{src.suffix[1:]}.o"
        _compile(src, obj)
        lib_objs.append(obj)
    return lib_objs


def _link_flat64(src: Path, tmp: Path, lib_objs: list[Path], out: Path) -> Path:
    obj = tmp / f"{src.stem}.o"
    elf = tmp / f"{src.stem}.elf"
    _compile(src, obj)
    subprocess.run(["ld", *LDFLAGS, "-T", str(LIB / "flat64.ld"), "-o", str(elf), *lib_objs, str(obj)], check=True)
    image = out / f"{src.stem}.bin"
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(image)], check=True)
    return image


def _need_toolchain() -> None:
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        raise SystemExit("building guests needs gcc and binutils (ld, objcopy)")


def build(out: Path) -> list[Path]:
    _need_toolchain()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lib_objs = _compile_lib(tmp)
        built = [_link_flat64(src, tmp, lib_objs, out) for src in guest_sources()]
        built += _build_multiboot(tmp, out)
    return built


def build_examples(out: Path = EXAMPLES) -> list[Path]:
    """``examples/<name>.c`` -> ``<out>/<name>.bin``: the examples' flat64 guests, same toolkit."""
    _need_toolchain()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lib_objs = _compile_lib(tmp)
        return [_link_flat64(src, tmp, lib_objs, out) for src in sorted(EXAMPLES.glob("*.c"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--examples-out", type=Path, default=EXAMPLES, help="where examples/*.c images go")
    args = parser.parse_args(argv)
    for image in build(args.out) + build_examples(args.examples_out):
        print(f"{image}  {image.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
