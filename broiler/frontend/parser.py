"""The ``broiler`` argument parser: one function per subcommand's options (the command line's table)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import exitcodes
from ..bench import cli as bench_cli
from .argtypes import positive
from .virtio_options import add_virtio_options

_positive_float = positive(float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broiler", description="A KVM VMM in Python for learning and testing x86 IO virtualization."
    )
    sub = parser.add_subparsers(dest="command")

    _add_run_parser(sub)
    sub.add_parser("list", help="list running VMs")
    stat = sub.add_parser("stat", help="live IO statistics of a running VM")
    stat.add_argument("name")
    stat.add_argument("--once", action="store_true", help="print one table and exit")
    stat.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS")
    stop = sub.add_parser("stop", help="stop a running VM")
    stop.add_argument("name")
    regs = sub.add_parser("regs", help="every vCPU's registers, instruction and stack of a running VM")
    regs.add_argument("name")
    pause = sub.add_parser("pause", help="park every vCPU and hold the devices' timers and doorbells")
    pause.add_argument("name")
    resume = sub.add_parser("resume", help="resume a paused VM where it stopped")
    resume.add_argument("name")
    wakeup = sub.add_parser("wakeup", help="wake a VM its guest suspended (ACPI S3): it resumes at its waking vector")
    wakeup.add_argument("name")
    snapshot = sub.add_parser("snapshot", help="write a running VM to FILE, for `broiler run --restore FILE`")
    snapshot.add_argument("name")
    snapshot.add_argument("file")
    snapshot.add_argument("--stop", action="store_true", help="end the VM once the snapshot is written")

    bench_cli.add_parser(sub)

    host = sub.add_parser("host", help="what this host's KVM does that matters to broiler (a probe VM, ms)")
    host.add_argument("--json", action="store_true", help="print the probe's findings as JSON")

    layout = sub.add_parser("layout", help="print the guest-physical map and the port map")
    layout.add_argument("-m", "--mem", default="4G", metavar="SIZE", help="guest RAM (default 4G)")
    layout.add_argument("--no-demo-devices", action="store_true")
    _add_device_options(layout)
    layout.add_argument("--console", choices=("serial", "virtio", "none"), default=None, help="virtio: add hvc0")
    _add_replay_parser(sub)
    return parser


def _add_replay_parser(sub: Any) -> None:
    replay = sub.add_parser(
        "replay",
        help="re-drive a --record file's accesses into the device models, without KVM, and compare",
        description=f"Exit status 0: no divergence; {exitcodes.DIVERGED}: the devices diverged; 2: bad input.",
    )
    replay.add_argument("file", metavar="FILE", help="a file written by `broiler run --record`")
    replay.add_argument(
        "--device",
        dest="user_devices",
        action="append",
        default=None,
        metavar="FILE.py:CLASS,...",
        help="replace the recording's --device list with these (the same form as `broiler run --device`)",
    )
    replay.add_argument("--show", type=int, default=10, metavar="N", help="print the first N divergences (10)")
    replay.add_argument("--plot", metavar="F.png", help="draw accesses over time per device (needs matplotlib)")


def _add_run_parser(sub: Any) -> None:
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
        "(default: safe where a probe VM finds CPL0 code emulated, as on KVM-PVM; host elsewhere)",
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
    _add_machine_options(run)
    _add_restore_options(run)


def _add_restore_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--restore",
        metavar="FILE",
        help="run on from a snapshot (`broiler snapshot`); only --name, --timeout, the console and statistics "
        "options, --disk-path and --verify go with it (docs/snapshot.md)",
    )
    run.add_argument(
        "--disk-path",
        dest="disk_paths",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="with --restore: the snapshot's disk OLD is now at NEW (repeatable)",
    )
    run.add_argument(
        "--verify", action="store_true", help="with --restore: read all saved memory first and check its CRCs"
    )


def _add_record_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--record",
        metavar="FILE",
        help="write every device-visible event to FILE, for `broiler replay` (docs/record-replay.md)",
    )
    run.add_argument(
        "--record-limit",
        metavar="SIZE",
        default="1G",
        help="the largest --record file (default 1G): at the limit the recording ends with a marker, the VM runs on",
    )


def _add_machine_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--testdev", action="store_true", help="add QEMU's test devices: fw_cfg (0x510), pc-testdev, pci-testdev"
    )
    run.add_argument("-m", "--mem", default=None, metavar="SIZE", help="guest RAM, e.g. 256M, 4G (default 256M)")
    run.add_argument("-c", "--cpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1)")
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"stop the guest after this long, in wall time: a pause counts (exit status {exitcodes.TIMEOUT})",
    )
    run.add_argument("--no-demo-devices", action="store_true", help="leave out the seed's demo devices")
    run.add_argument(
        "--hpet",
        choices=("on", "off"),
        default=None,
        help="the HPET at 0xFED00000 and its ACPI table (default: on, but off for Linux guests, whose boot "
        "with an HPET is not yet validated here)",
    )
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
    _add_record_options(run)
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
    run.add_argument(
        "--name", help="the VM's name for `broiler list/stat/stop/regs/pause/resume/wakeup` (default vm-PID)"
    )
    run.add_argument("--stats-json", metavar="FILE", help="write the final counters here as JSON")
    run.add_argument(
        "--stats", action="store_true", help="print the IO table after the run (always on for the demo guest)"
    )


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
