"""The command-line options of the virtio devices: --disk/-r/--rootfs, --rng, --virtio-transport,
--console virtio and --virtio-console-log, for `broiler run` and `broiler layout`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from .. import exitcodes
from ..errors import ConfigError
from ..inputs import check_output
from ..vmm.platform import stdout_writer
from ..vmm.virtio import parse_disk, parse_transport, virtio_console
from .console import TerminalConsole

if TYPE_CHECKING:
    from ..vmm.config import MachineConfig
    from ..vmm.machine import Machine


def add_virtio_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disk",
        "-r",
        "--rootfs",
        dest="disks",
        action="append",
        default=[],
        metavar="FILE[,ro=on][,serial=ID]",
        help="a raw image as a virtio-blk disk (repeatable; -r/--rootfs is Broiler's spelling)",
    )
    parser.add_argument("--rng", action="store_true", help="add a virtio-rng device (host os.urandom)")
    parser.add_argument(
        "--virtio-transport",
        default="transitional",
        metavar="KIND",
        help="modern, legacy or transitional (default: transitional, both register files)",
    )


def virtio_config(config: MachineConfig, args: argparse.Namespace, console_output: BinaryIO | None = None) -> None:
    """The virtio part of the command line; ``console_output`` is the open --virtio-console-log."""
    config.disks = [parse_disk(text) for text in args.disks]
    config.virtio_rng = args.rng
    config.virtio_transport = parse_transport(args.virtio_transport)
    if console_output is not None:
        config.virtio_console = file_writer(console_output)
    elif args.console == "virtio":
        config.virtio_console = stdout_writer


def file_writer(f: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        f.write(data)
        f.flush()  # a reader (a test, `tail -f`) sees each line as the guest wrote it

    return write


def open_console_log(path: str | None) -> BinaryIO | None:
    if path is None:
        return None
    check_output(path, "--virtio-console-log")
    try:
        return open(path, "wb")  # noqa: SIM115 -- closed by cmd_run's with statement, after the machine stops
    except OSError as exc:
        raise ConfigError(f"cannot write --virtio-console-log {path!r}: {exc.strerror}") from None


def start_console(args: argparse.Namespace, kind: str | None, machine: Machine, stack: contextlib.ExitStack) -> None:
    """Connect stdin to the guest's console (serial by default for Linux), restoring the terminal at the end."""
    mode = args.console or ("serial" if kind == "linux" else "none")
    target = virtio_console(machine.pci) if mode == "virtio" else machine.serial if mode == "serial" else None
    if target is None:
        return
    console = TerminalConsole(target, machine.loop, lambda: machine.request_exit(exitcodes.USER_QUIT, "Ctrl-A x"))
    console.start()
    stack.callback(console.restore)


def discard(data: bytes) -> None:
    return None
