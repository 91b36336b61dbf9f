"""``broiler run --restore FILE`` and ``broiler snapshot NAME FILE`` (docs/snapshot.md).

A snapshot holds the whole machine, so ``--restore`` takes only what a snapshot cannot hold: the VM's name,
the console, a timeout, statistics, a disk's new path (``--disk-path OLD=NEW``) and ``--verify``. Any other
option would contradict the snapshot; it is refused with one line (exit 2) rather than half-honoured.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from ..errors import ConfigError
from ..inputs import check_output
from ..vmm.snapshot.api import restore_machine
from .control import ControlServer, request, socket_path
from .parser import build_parser
from .run import cmd_run, report_run
from .virtio_options import file_writer, open_console_log, start_console

# The run options --restore accepts (dest names); every other one must be left at its default.
RESTORE_OPTIONS = {
    "command",
    "restore",
    "disk_paths",
    "verify",
    "name",
    "timeout",
    "console",
    "virtio_console_log",
    "stats",
    "stats_json",
}


def run_or_restore(args: argparse.Namespace) -> int:
    """``broiler run``: a new guest, or with --restore the snapshot's."""
    if args.restore is None:
        if args.disk_paths or args.verify:
            raise ConfigError("--disk-path and --verify go with --restore")
        return cmd_run(args)
    check_restore_options(args, build_parser().parse_args(["run"]))
    return cmd_restore(args)


def check_restore_options(args: argparse.Namespace, defaults: argparse.Namespace) -> None:
    for key, value in vars(args).items():
        if key not in RESTORE_OPTIONS and value != getattr(defaults, key, value):
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{option} cannot go with --restore: the snapshot holds the machine as it was")


def parse_disk_paths(items: list[str]) -> dict[str, str]:
    moved: dict[str, str] = {}
    for item in items:
        old, eq, new = item.partition("=")
        if not eq or not old or not new:
            raise ConfigError(f"--disk-path {item!r}: write OLD=NEW (the path in the snapshot, then where it is now)")
        moved[os.path.abspath(old)] = os.path.abspath(new)
    return moved


def cmd_restore(args: argparse.Namespace) -> int:
    """Rebuild the snapshot's machine and run it on from where it stopped."""
    if args.name is not None:
        socket_path(args.name)
    if args.stats_json is not None:
        check_output(args.stats_json, "--stats-json")
    console_log = open_console_log(args.virtio_console_log)
    with console_log or contextlib.nullcontext():
        machine = restore_machine(
            args.restore,
            disk_paths=parse_disk_paths(args.disk_paths),
            verify=args.verify,
            virtio_console=file_writer(console_log) if console_log is not None else None,
        )
        with machine, contextlib.ExitStack() as stack:
            name = f"vm-{os.getpid()}" if args.name is None else args.name
            stack.callback(ControlServer(machine, name).close)
            kind = "linux" if machine.guest_name.startswith("linux") else None
            start_console(args, kind, machine, stack)
            status = machine.run(timeout=args.timeout)
            report_run(args, machine, status, verbose=args.stats)
    return status


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Ask a running VM to write itself to FILE (then go on, or end with --stop)."""
    path = os.path.abspath(args.file)
    if not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(f"cannot write snapshot {args.file!r}: no such directory")
    reply = request(args.name, "snapshot", timeout=600.0, params={"path": path, "stop": args.stop})
    after = "the VM is ending" if args.stop else "the VM runs on"
    mib = 1 << 20
    print(
        f"{reply['path']}: {reply['apparent_size'] / mib:.1f} MiB apparent, {reply['disk_size'] / mib:.1f} MiB on "
        f"disk, written in {reply['seconds'] * 1000:.0f} ms; {after}"
    )
    return 0
