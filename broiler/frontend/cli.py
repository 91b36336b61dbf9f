"""The ``broiler`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO

from .. import exitcodes
from ..core.memory import MiB, format_size, parse_size
from ..errors import ConfigError, KvmUnavailable
from ..guests import packaged_guest
from ..inputs import check_input, check_output, read_head, read_input
from ..vmm.userdev import parse_device_spec
from ..vmm.virtio import virtio_functions
from .argtypes import positive
from .trace import Tracer, parse_kinds
from .virtio_options import add_virtio_options, discard, open_console_log, start_console, virtio_config

if TYPE_CHECKING:
    from ..vmm.machine import MachineConfig

DEMO_GUEST = "demo"
LINUX_RAM = 1024 * MiB


_read_image = read_input


_positive_float = positive(float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broiler", description="A KVM VMM in Python for learning and testing x86 IO virtualization."
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a guest (with no arguments: the embedded demo guest)")
    run.add_argument("--guest", metavar="FILE", help="a flat64 image (see README: the flat64 contract)")
    run.add_argument(
        "-k",
        "--kernel",
        metavar="FILE",
        help="a Linux bzImage or vmlinux, or a Multiboot v1 kernel (ELF32/ELF64 or a.out kludge)",
    )
    run.add_argument(
        "-i",
        "--initrd",
        metavar="FILE",
        action="append",
        default=[],
        help="Linux: the initrd; Multiboot: a module (repeatable)",
    )
    run.add_argument(
        "-p",
        "--append",
        metavar="CMDLINE",
        default=None,
        help="the kernel command line (Linux default: a serial console; see docs/linux.md)",
    )
    run.add_argument(
        "--cpu-profile",
        choices=("safe", "host"),
        default=None,
        help="Linux: CPUID profile; safe hides what instruction-emulating hosts cannot run "
        "(default: safe on KVM-PVM, host elsewhere)",
    )
    run.add_argument(
        "--boot-method",
        choices=("auto", "pvh", "vmlinux64", "bzimage64"),
        default="auto",
        help="Linux: how to enter the kernel (default auto: PVH if the kernel has the note)",
    )
    run.add_argument(
        "--syscall-assist",
        choices=("auto", "on", "off"),
        default="auto",
        help="Linux: complete user-mode syscall in broiler, for hosts whose KVM cannot "
        "(default auto: on when a probe VM's user-mode syscall arrives at CPL3; `broiler host`)",
    )
    run.add_argument(
        "--emulate-missing",
        choices=("auto", "on", "off"),
        default="auto",
        help="complete in broiler the instructions KVM's emulator lacks, for every guest kind (default auto: "
        "on when a probe VM's CPL0 popcnt ends in an emulation failure; `broiler host`)",
    )
    run.add_argument(
        "--testdev", action="store_true", help="add QEMU's test devices: fw_cfg (0x510), pc-testdev, pci-testdev"
    )
    run.add_argument("-m", "--mem", default=None, metavar="SIZE", help="guest RAM, e.g. 256M, 4G (default 256M)")
    run.add_argument("-c", "--cpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1)")
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"stop the guest after this long (exit status {exitcodes.TIMEOUT})",
    )
    run.add_argument("--no-demo-devices", action="store_true", help="leave out the seed's demo devices")
    _add_device_options(run)
    run.add_argument(
        "--async-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long the async demo devices 'work' before completing (default 0.05; Broiler used 2)",
    )
    run.add_argument(
        "--trace",
        metavar="KINDS",
        help="print one line per event: a comma-separated list of pio, mmio, coalesced, doorbell, irq (or all)",
    )
    run.add_argument("--trace-file", metavar="FILE", help="write the trace here instead of stderr")
    run.add_argument("--trace-json", action="store_true", help="trace as JSON lines")
    run.add_argument(
        "--console",
        choices=("serial", "virtio", "none"),
        default=None,
        help="serial: stdin feeds the guest's UART (raw mode on a terminal; Ctrl-A x quits); virtio: the same "
        "with a virtio-console (the guest's hvc0), its output on stdout. Default: serial for Linux, none otherwise",
    )
    run.add_argument(
        "--virtio-console-log",
        metavar="FILE",
        help="send the virtio-console's output (hvc0) to FILE instead of stdout; adds the device if "
        "--console is not virtio",
    )
    run.add_argument("--name", help="the VM's name for `broiler list/stat/stop/regs` (default vm-PID)")
    run.add_argument("--stats-json", metavar="FILE", help="write the final counters here as JSON")
    run.add_argument(
        "--stats", action="store_true", help="print the IO table after the run (always on for the demo guest)"
    )

    sub.add_parser("list", help="list running VMs")
    stat = sub.add_parser("stat", help="live IO statistics of a running VM")
    stat.add_argument("name")
    stat.add_argument("--once", action="store_true", help="print one table and exit")
    stat.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS")
    stop = sub.add_parser("stop", help="stop a running VM")
    stop.add_argument("name")
    regs = sub.add_parser("regs", help="every vCPU's registers, instruction and stack of a running VM")
    regs.add_argument("name")

    from ..bench import cli as bench_cli

    bench_cli.add_parser(sub)

    host = sub.add_parser("host", help="what this host's KVM does that matters to broiler (a probe VM, ms)")
    host.add_argument("--json", action="store_true", help="print the probe's findings as JSON")

    layout = sub.add_parser("layout", help="print the guest-physical map and the port map")
    layout.add_argument("-m", "--mem", default="4G", metavar="SIZE", help="guest RAM (default 4G)")
    layout.add_argument("--no-demo-devices", action="store_true")
    _add_device_options(layout)
    layout.add_argument("--console", choices=("serial", "virtio", "none"), default=None, help="virtio: add hvc0")
    return parser


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        dest="user_devices",
        action="append",
        default=[],
        metavar="FILE.py:CLASS,pio=PORT|mmio=ADDR|pci[,size=N][,KEY=VALUE]",
        help="your device class (or MODULE:CLASS) on the machine; KEY=VALUE go to its constructor (docs/api.md)",
    )
    add_virtio_options(parser)


def _device_config(config: MachineConfig, args: argparse.Namespace, console_log: BinaryIO | None = None) -> None:
    virtio_config(config, args, console_log)
    config.devices = [parse_device_spec(text) for text in args.user_devices]


def cmd_run(args: argparse.Namespace) -> int:
    from ..boot.multiboot import DEFAULT_RAM as MULTIBOOT_RAM
    from ..boot.multiboot import is_multiboot
    from ..emulate.kvm_cpu import install_instruction_completer
    from ..vmm.machine import Machine, MachineConfig
    from .report import exit_table, io_table

    if args.guest is not None and args.kernel is not None:
        raise ConfigError("give either --guest (flat64) or --kernel, not both")
    demo = args.guest is None and args.kernel is None
    kind = None
    if args.kernel is not None:
        kernel_head = read_head(args.kernel, "kernel", 8192)
        kind = "multiboot" if is_multiboot(kernel_head) else "linux"
        if kind == "linux" and not (kernel_head.startswith(b"\x7fELF") or kernel_head[0x202:0x206] == b"HdrS"):
            raise ConfigError(
                f"{args.kernel!r} is neither a Linux kernel (bzImage or ELF vmlinux) nor a Multiboot kernel"
            )
        if kind == "linux" and len(args.initrd) > 1:
            raise ConfigError("a Linux kernel takes one --initrd")
        default_mem = MULTIBOOT_RAM if kind == "multiboot" else LINUX_RAM
    else:
        if args.initrd or args.append is not None:
            raise ConfigError("--initrd and --append go with --kernel")
        default_mem = 256 * MiB
    mem = parse_size(args.mem, what="--mem") if args.mem else default_mem
    if kind is None:
        image = packaged_guest(DEMO_GUEST) if demo else _read_image(args.guest, "guest image", limit=mem)
    else:
        check_input(args.kernel, "kernel", limit=mem)
        for initrd in args.initrd:
            check_input(initrd, "initrd", limit=mem)
    config = MachineConfig(mem_size=mem, cpus=args.cpus, demo_devices=not args.no_demo_devices, testdev=args.testdev)
    console_log = open_console_log(args.virtio_console_log)
    _device_config(config, args, console_log)
    if args.async_delay is not None:
        if not 0 <= args.async_delay <= 3600:
            raise ConfigError("--async-delay must be between 0 and 3600 seconds")
        config.async_delay = args.async_delay
    trace_kinds = parse_kinds(args.trace) if args.trace is not None else None
    if trace_kinds is None and (args.trace_file or args.trace_json):
        raise ConfigError("--trace-file and --trace-json go with --trace")
    from .control import ControlServer

    name = f"vm-{os.getpid()}" if args.name is None else args.name
    if args.stats_json is not None:
        check_output(args.stats_json, "--stats-json")
    if args.trace_file is not None:
        check_output(args.trace_file, "--trace-file")
    # The log is closed last: the machine's stop hooks flush the console's output into it first.
    with console_log or contextlib.nullcontext(), Machine(config) as machine, contextlib.ExitStack() as stack:
        stack.callback(ControlServer(machine, name).close)
        if trace_kinds is not None:
            out = sys.stderr
            if args.trace_file:
                try:
                    out = stack.enter_context(open(args.trace_file, "w"))  # noqa: SIM115
                except OSError as exc:
                    raise ConfigError(f"cannot write --trace-file {args.trace_file!r}: {exc.strerror}") from None
            tracer = Tracer(trace_kinds, out, as_json=args.trace_json)
            tracer.attach(machine)
            stack.callback(tracer.flush)
        start_console(args, kind, machine, stack)
        if kind == "multiboot":
            machine.load_multiboot(args.kernel, cmdline=args.append or "", initrds=tuple(args.initrd))
        elif kind == "linux":
            from ..vmm.linux import DEFAULT_CMDLINE, default_profile, load_linux

            boot = load_linux(
                machine,
                args.kernel,
                initrd=args.initrd[0] if args.initrd else None,
                cmdline=DEFAULT_CMDLINE if args.append is None else args.append,
                profile=args.cpu_profile or default_profile(),
                method=args.boot_method,
                syscall_assist=args.syscall_assist,
                emulate_missing=args.emulate_missing,
            )
            print(f"broiler: {boot.description}", file=sys.stderr)
            decision = machine.decisions["syscall_assist"]
            print(
                f"broiler: syscall assist {'on' if decision['enabled'] else 'off'} ({decision['reason']})",
                file=sys.stderr,
            )
        else:
            machine.load_flat64(image)
        if kind != "linux":  # load_linux decides it with the syscall assist
            install_instruction_completer(machine.exits, machine.memory, machine.decisions, args.emulate_missing)
        status = machine.run(timeout=args.timeout)
        if args.stats_json:
            _write_stats_json(machine, args.stats_json)
        if demo or args.stats:
            print()
            print("\n".join(io_table(machine) + exit_table(machine)))
        if status == exitcodes.TIMEOUT:
            print(f"broiler: {machine.exit_reason}", file=sys.stderr)
        elif demo or args.stats:
            print(f"VM ended: {machine.exit_reason} → exit status {status} ({exitcodes.describe(status)})")
    if status == exitcodes.USER_QUIT:  # after the console gave the terminal back: on a line of its own
        print(f"\nbroiler: you ended the VM (Ctrl-A x); exit status {status}", file=sys.stderr)
    return status


def _write_stats_json(machine: object, path: str) -> None:
    import json

    from .report import device_rows, snapshot_stats

    data = {**snapshot_stats(machine), "devices": device_rows(machine)}  # type: ignore[arg-type]
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
    except OSError as exc:
        raise ConfigError(f"cannot write --stats-json {path!r}: {exc.strerror}") from None


def cmd_list(args: argparse.Namespace) -> int:
    from .control import list_vms

    live, stale = list_vms()
    for name in stale:
        print(f"(removed the stale socket of {name})", file=sys.stderr)
    if not live:
        print("no running VMs")
        return 0
    print(f"{'NAME':<20} {'PID':>8} {'UPTIME':>9} {'CPUS':>4} {'MEM':>6}  GUEST")
    for vm in live:
        print(
            f"{vm['name']:<20} {vm['pid']:>8} {vm['uptime']:>8.1f}s {vm['cpus']:>4} {format_size(vm['mem']):>6}  "
            f"{vm['guest']}"
        )
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    import time

    from .control import request
    from .report import stat_table

    previous = None
    while True:
        snap = request(args.name, "stats")
        lines = stat_table(snap, previous)
        if args.once:
            print("\n".join(lines))
            return 0
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print("\n".join(lines), flush=True)
        previous = snap
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .control import request

    request(args.name, "stop")
    print(f"stopping {args.name}")
    return 0


def cmd_regs(args: argparse.Namespace) -> int:
    from .control import request

    for dump in request(args.name, "regs")["vcpus"]:
        print(dump.rstrip("\n"))
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    from ..vmm.machine import MachineConfig
    from ..vmm.platform import PlatformSketch
    from .layout import iomem, ioports

    config = MachineConfig(mem_size=parse_size(args.mem, what="--mem"), demo_devices=not args.no_demo_devices)
    _device_config(config, args)
    if config.virtio_console is not None:
        config.virtio_console = discard  # nothing runs: never write to stdout from the sketch
    sketch = PlatformSketch(config)
    sketch.close()  # releases the disks; the map is what we print
    print(f"# guest-physical memory ({format_size(config.mem_size)} of RAM), /proc/iomem style")
    print("\n".join(iomem(sketch.map, sketch.mmio_bus)))
    print("\n# IO ports, /proc/ioports style")
    print("\n".join(ioports(sketch.pio_bus)))
    if sketch.pci is not None:
        print("\n# PCI bus 0 (slot, vendor:device, class, BARs, interrupt)")
        print("\n".join(sketch.pci.describe()))
        functions = virtio_functions(sketch.pci)
        if functions:
            print("\n# virtio functions (queues, MSI-X, doorbells: ioeventfds at these offsets of the BARs above)")
            print("\n".join(line for fn in functions for line in fn.describe_layout()))
    return 0


def cmd_host(args: argparse.Namespace) -> int:
    import json
    import os.path

    from ..emulate.kvm_cpu import decide_emulate_missing
    from ..kvm.hostprobe import host_behaviour
    from ..vmm.linux import decide_syscall_assist, default_profile

    probe = host_behaviour()
    assist, reason = decide_syscall_assist("auto")
    completer, completer_reason = decide_emulate_missing("auto")
    if args.json:
        auto = {"syscall_assist_auto": assist, "reason": reason, "emulate_missing_auto": completer}
        print(json.dumps({**probe.as_dict(), **auto, "emulate_missing_reason": completer_reason}, indent=2))
        return 0
    print(f"host kernel: {probe.release}" + (" (kvm_pvm loaded)" if os.path.exists("/sys/module/kvm_pvm") else ""))
    print(f"probe VM: {probe.seconds * 1000:.1f} ms; {probe.detail}")
    where = {0: "at CPL0 (as on hardware)", 3: "still at CPL3", None: "nowhere (see above)"}[probe.syscall_cpl]
    print(f"user-mode syscall reaches LSTAR: {where}")
    print(f"non-canonical WRMSR to LSTAR: {probe.noncanonical_lstar}")
    print(f"--syscall-assist auto: {'on' if assist else 'off'} ({reason})")
    print(f"--emulate-missing auto: {'on' if completer else 'off'} ({completer_reason})")
    print(f"--cpu-profile default: {default_profile()}")
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM before the VM runs (reading an image): status 130, as during the run


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "bench":
            from ..bench import cli as bench_cli

            return bench_cli.run(args)
        commands = {
            "host": cmd_host,
            "layout": cmd_layout,
            "list": cmd_list,
            "stat": cmd_stat,
            "stop": cmd_stop,
            "regs": cmd_regs,
        }
        if args.command in commands:
            return commands[args.command](args)
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
    try:
        sys.exit(main())
    except BrokenPipeError:  # `broiler layout | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(exitcodes.OK)


if __name__ == "__main__":
    entry()
