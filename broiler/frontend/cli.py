"""The ``broiler`` command line: parse (frontend/parser.py), dispatch, and turn errors into exit statuses."""

from __future__ import annotations

import os
import signal
import sys
import threading

from .. import exitcodes
from ..bench import cli as bench_cli
from ..errors import ConfigError, KvmUnavailable
from .commands import cmd_host, cmd_layout, cmd_list, cmd_pause, cmd_regs, cmd_resume, cmd_stat, cmd_stop, cmd_wakeup
from .parser import build_parser
from .replay import cmd_replay
from .restore import cmd_snapshot, run_or_restore

COMMANDS = {
    "run": run_or_restore,
    "snapshot": cmd_snapshot,
    "bench": bench_cli.run,
    "host": cmd_host,
    "layout": cmd_layout,
    "list": cmd_list,
    "stat": cmd_stat,
    "stop": cmd_stop,
    "regs": cmd_regs,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "wakeup": cmd_wakeup,
    "replay": cmd_replay,
}


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
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
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
