"""``broiler run``: from the options to a running machine and back to an exit status."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import BinaryIO

from .. import exitcodes
from ..boot.multiboot import DEFAULT_RAM as MULTIBOOT_RAM
from ..boot.multiboot import is_multiboot
from ..core.memory import MiB, parse_size
from ..emulate.kvm_cpu import install_instruction_completer
from ..errors import ConfigError
from ..guests import packaged_guest
from ..inputs import check_input, check_output, read_head, read_input
from ..vmm.config import MachineConfig
from ..vmm.linux import DEFAULT_CMDLINE, default_profile, load_linux
from ..vmm.machine import Machine
from ..vmm.recorder import Recorder, recording_header
from ..vmm.recording import MIN_CHUNK_RAW_BYTES as MIN_RECORD_LIMIT
from ..vmm.userdev import parse_device_spec
from .control import ControlServer, socket_path
from .report import device_rows, exit_table, io_table, snapshot_stats
from .trace import Tracer, parse_kinds
from .virtio_options import open_console_log, start_console, virtio_config

DEMO_GUEST = "demo"
LINUX_RAM = 1024 * MiB


def device_config(config: MachineConfig, args: argparse.Namespace, console_log: BinaryIO | None = None) -> None:
    virtio_config(config, args, console_log)
    config.devices = [parse_device_spec(text) for text in args.user_devices]


def guest_kind(args: argparse.Namespace) -> tuple[str | None, int]:
    """None (a flat64 image or the demo), "multiboot" or "linux"; and the default RAM for it."""
    if args.guest is not None and args.kernel is not None:
        raise ConfigError("give either --guest (flat64) or --kernel, not both")
    if args.kernel is None:
        if args.initrd or args.append is not None:
            raise ConfigError("--initrd and --append go with --kernel")
        return None, 256 * MiB
    kernel_head = read_head(args.kernel, "kernel", 8192)
    kind = "multiboot" if is_multiboot(kernel_head) else "linux"
    if kind == "linux" and not (kernel_head.startswith(b"\x7fELF") or kernel_head[0x202:0x206] == b"HdrS"):
        raise ConfigError(f"{args.kernel!r} is neither a Linux kernel (bzImage or ELF vmlinux) nor a Multiboot kernel")
    if kind == "linux" and len(args.initrd) > 1:
        raise ConfigError("a Linux kernel takes one --initrd")
    return kind, MULTIBOOT_RAM if kind == "multiboot" else LINUX_RAM


def check_run_options(args: argparse.Namespace, kind: str | None, mem: int) -> bytes | None:
    """Everything that can be refused before a VM exists; the flat64 image (read, size-checked) if any."""
    if args.async_delay is not None and not 0 <= args.async_delay <= 3600:
        raise ConfigError("--async-delay must be between 0 and 3600 seconds")
    if args.trace is None and (args.trace_file or args.trace_json):
        raise ConfigError("--trace-file and --trace-json go with --trace")
    if args.trace is not None:
        parse_kinds(args.trace)
    if args.name is not None:
        socket_path(args.name)  # a bad name is refused before anything runs
    for path, what in ((args.stats_json, "--stats-json"), (args.trace_file, "--trace-file")):
        if path is not None:
            check_output(path, what)
    if kind is not None:
        check_input(args.kernel, "kernel", limit=mem)
        for initrd in args.initrd:
            check_input(initrd, "initrd", limit=mem)
        return None
    return packaged_guest(DEMO_GUEST) if args.guest is None else read_input(args.guest, "guest image", limit=mem)


def cmd_run(args: argparse.Namespace) -> int:
    kind, default_mem = guest_kind(args)
    mem = parse_size(args.mem, what="--mem") if args.mem else default_mem
    image = check_run_options(args, kind, mem)
    demo = args.guest is None and args.kernel is None
    config = MachineConfig(mem_size=mem, cpus=args.cpus, demo_devices=not args.no_demo_devices, testdev=args.testdev)
    # Off by default for Linux: its clocksource choice changes with an HPET, not yet validated in a full boot.
    config.hpet = kind != "linux" if args.hpet is None else args.hpet == "on"
    console_log = open_console_log(args.virtio_console_log)
    device_config(config, args, console_log)
    if args.record is not None:
        check_output(args.record, "--record")
        args.record_limit_bytes = parse_size(args.record_limit, what="--record-limit")
        if args.record_limit_bytes < MIN_RECORD_LIMIT:
            raise ConfigError(f"bad --record-limit {args.record_limit!r}: at least 4K (the file's header)")
    if args.async_delay is not None:
        config.async_delay = args.async_delay
    name = f"vm-{os.getpid()}" if args.name is None else args.name
    # The log is closed last: the machine's stop hooks flush the console's output into it first.
    with console_log or contextlib.nullcontext(), Machine(config) as machine, contextlib.ExitStack() as stack:
        stack.callback(ControlServer(machine, name).close)
        _start_trace(args, machine, stack)
        _start_record(args, config, machine, stack)
        start_console(args, kind, machine, stack)
        _load_guest(args, kind, machine, image)
        status = machine.run(timeout=args.timeout)
        report_run(args, machine, status, verbose=demo or args.stats)
    if status == exitcodes.USER_QUIT:  # after the console gave the terminal back: on a line of its own
        print(f"\nbroiler: you ended the VM (Ctrl-A x); exit status {status}", file=sys.stderr)
    return status


def _start_trace(args: argparse.Namespace, machine: Machine, stack: contextlib.ExitStack) -> None:
    if args.trace is None:
        return
    out = sys.stderr
    if args.trace_file:
        try:
            out = stack.enter_context(open(args.trace_file, "w"))  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write --trace-file {args.trace_file!r}: {exc.strerror}") from None
    tracer = Tracer(parse_kinds(args.trace), out, as_json=args.trace_json)
    tracer.attach(machine)
    stack.callback(tracer.flush)


def _start_record(
    args: argparse.Namespace, config: MachineConfig, machine: Machine, stack: contextlib.ExitStack
) -> None:
    if args.record is None:
        return
    try:
        out = stack.enter_context(open(args.record, "wb"))  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot write --record {args.record!r}: {exc.strerror}") from None
    guest = args.kernel or args.guest or DEMO_GUEST
    header = recording_header(config, list(args.user_devices), machine, guest)
    recorder = Recorder(out, header, limit=args.record_limit_bytes, on_cut=lambda events: _record_cut(args, events))
    recorder.attach(machine)
    stack.callback(recorder.close)


def _record_cut(args: argparse.Namespace, events: int) -> None:
    """The writer thread's one line when the recording reaches its limit (the VM is not disturbed)."""
    print(
        f"broiler: --record {args.record!r} reached --record-limit {args.record_limit} after {events} events: "
        "recording stopped, the VM runs on",
        file=sys.stderr,
        flush=True,
    )


def _load_guest(args: argparse.Namespace, kind: str | None, machine: Machine, image: bytes | None) -> None:
    if kind == "linux":
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
        state = "on" if decision["enabled"] else "off"
        print(f"broiler: syscall assist {state} ({decision['reason']})", file=sys.stderr)
        return  # load_linux decides instruction completion together with the syscall assist
    if kind == "multiboot":
        machine.load_multiboot(args.kernel, cmdline=args.append or "", initrds=tuple(args.initrd))
    else:
        assert image is not None
        machine.load_flat64(image)
    install_instruction_completer(machine.exits, machine.memory, machine.decisions, args.emulate_missing)


def report_run(args: argparse.Namespace, machine: Machine, status: int, *, verbose: bool) -> None:
    if args.stats_json:
        write_stats_json(machine, args.stats_json)
    if verbose:
        print()
        print("\n".join(io_table(machine) + exit_table(machine)))
    if status == exitcodes.TIMEOUT:
        print(f"broiler: {machine.exit_reason}", file=sys.stderr)
    elif verbose:
        print(f"VM ended: {machine.exit_reason} → exit status {status} ({exitcodes.describe(status)})")


def write_stats_json(machine: Machine, path: str) -> None:
    data = {**snapshot_stats(machine), "devices": device_rows(machine)}
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
    except OSError as exc:
        raise ConfigError(f"cannot write --stats-json {path!r}: {exc.strerror}") from None
