"""The ``broiler`` command line."""

from __future__ import annotations

import argparse
import sys
from importlib import resources

from . import exitcodes
from .errors import ConfigError, KvmUnavailable
from .memory import MiB, format_size, parse_size

DEMO_GUEST = "demo"


def packaged_guest(name: str) -> bytes:
    return resources.files("broiler.guests").joinpath(f"{name}.bin").read_bytes()


def _read_image(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"{what} {path!r} is empty")
    return data


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broiler", description="A KVM VMM in Python for learning and "
                                     "testing x86 IO virtualization.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a guest (with no arguments: the embedded demo guest)")
    run.add_argument("--guest", metavar="FILE", help="a flat64 image (see README: the flat64 contract)")
    run.add_argument("-k", "--kernel", metavar="FILE", help="a Multiboot v1 kernel (ELF32/ELF64 or a.out kludge)")
    run.add_argument("-i", "--initrd", metavar="FILE", action="append", default=[],
                     help="a Multiboot module (repeatable)")
    run.add_argument("-p", "--append", metavar="CMDLINE", default="", help="the kernel command line")
    run.add_argument("--testdev", action="store_true",
                     help="add QEMU's test devices: fw_cfg (0x510), pc-testdev, pci-testdev")
    run.add_argument("-m", "--mem", default=None, metavar="SIZE", help="guest RAM, e.g. 256M, 4G (default 256M)")
    run.add_argument("-c", "--cpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1)")
    run.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                     help=f"stop the guest after this long (exit status {exitcodes.TIMEOUT})")
    run.add_argument("--no-demo-devices", action="store_true", help="leave out the seed's demo devices")
    run.add_argument("--stats", action="store_true", help="print the IO table after the run "
                     "(always on for the demo guest)")

    layout = sub.add_parser("layout", help="print the guest-physical map and the port map")
    layout.add_argument("-m", "--mem", default="4G", metavar="SIZE", help="guest RAM (default 4G)")
    layout.add_argument("--no-demo-devices", action="store_true")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .boot.multiboot import DEFAULT_RAM as MULTIBOOT_RAM
    from .boot.multiboot import is_multiboot
    from .machine import Machine, MachineConfig
    from .report import exit_table, io_table

    if args.guest is not None and args.kernel is not None:
        raise ConfigError("give either --guest (flat64) or --kernel, not both")
    demo = args.guest is None and args.kernel is None
    if args.kernel is not None:
        kernel_head = _read_image(args.kernel, "kernel")[:8192]
        if not is_multiboot(kernel_head):
            raise ConfigError(f"{args.kernel!r} is not a Multiboot v1 kernel (no 0x1BADB002 header in its "
                              "first 8 KiB)")
        default_mem = MULTIBOOT_RAM
    else:
        if args.initrd or args.append:
            raise ConfigError("--initrd and --append go with --kernel")
        image = packaged_guest(DEMO_GUEST) if demo else _read_image(args.guest, "guest image")
        default_mem = 256 * MiB
    mem = parse_size(args.mem, what="--mem") if args.mem else default_mem
    config = MachineConfig(mem_size=mem, cpus=args.cpus, demo_devices=not args.no_demo_devices,
                           testdev=args.testdev)
    with Machine(config) as machine:
        if args.kernel is not None:
            machine.load_multiboot(args.kernel, cmdline=args.append, initrds=tuple(args.initrd))
        else:
            machine.load_flat64(image)
        status = machine.run(timeout=args.timeout)
        if demo or args.stats:
            print()
            print("\n".join(io_table(machine) + exit_table(machine)))
        if status == exitcodes.TIMEOUT:
            print(f"broiler: {machine.exit_reason}", file=sys.stderr)
        elif demo or args.stats:
            print(f"VM ended: {machine.exit_reason} → exit status {status} ({exitcodes.describe(status)})")
    return status


def cmd_layout(args: argparse.Namespace) -> int:
    from .layout import iomem, ioports
    from .machine import MachineConfig
    from .platform import PlatformSketch

    config = MachineConfig(mem_size=parse_size(args.mem, what="--mem"), demo_devices=not args.no_demo_devices)
    sketch = PlatformSketch(config)
    print(f"# guest-physical memory ({format_size(config.mem_size)} of RAM), /proc/iomem style")
    print("\n".join(iomem(sketch.map, sketch.mmio_bus)))
    print("\n# IO ports, /proc/ioports style")
    print("\n".join(ioports(sketch.pio_bus)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "layout":
            return cmd_layout(args)
        parser.error(f"unknown command {args.command}")
    except ConfigError as exc:
        print(f"broiler: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except KvmUnavailable as exc:
        print(f"broiler: {exc}", file=sys.stderr)
        return exitcodes.NO_KVM
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    return exitcodes.OK


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
