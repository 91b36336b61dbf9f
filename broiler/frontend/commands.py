"""``broiler list/stat/stop/regs/pause/resume/wakeup`` (talk to a running VM's control socket) and ``layout/host``
(no VM)."""

from __future__ import annotations

import argparse
import json
import os.path
import sys
import time

from ..core.memory import format_size, parse_size
from ..emulate.kvm_cpu import decide_emulate_missing
from ..kvm.hostprobe import host_behaviour
from ..vmm.config import MachineConfig
from ..vmm.linux import decide_syscall_assist, default_profile
from ..vmm.platform import PlatformSketch
from ..vmm.virtio import virtio_functions
from .control import list_vms, request
from .layout import iomem, ioports
from .report import stat_table, state_text
from .run import device_config
from .virtio_options import discard


def cmd_list(args: argparse.Namespace) -> int:

    live, stale = list_vms()
    for name in stale:
        print(f"(removed the stale socket of {name})", file=sys.stderr)
    if not live:
        print("no running VMs")
        return 0
    print(f"{'NAME':<20} {'PID':>8} {'UPTIME':>9} {'CPUS':>4} {'MEM':>6}  {'STATE':<24}  GUEST")
    for vm in live:
        print(
            f"{vm['name']:<20} {vm['pid']:>8} {vm['uptime']:>8.1f}s {vm['cpus']:>4} {format_size(vm['mem']):>6}  "
            f"{state_text(vm):<24}  {vm['guest']}"
        )
    return 0


def cmd_stat(args: argparse.Namespace) -> int:

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

    request(args.name, "stop")
    print(f"stopping {args.name}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pausing a paused VM is not an error: one line says so, and the status is 0."""
    reply = request(args.name, "pause")
    print(f"paused {args.name}" if reply["changed"] else f"{args.name} is already {state_text(reply)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    reply = request(args.name, "resume")
    print(f"resumed {args.name}" if reply["changed"] else f"{args.name} is not paused ({state_text(reply)})")
    return 0


def cmd_wakeup(args: argparse.Namespace) -> int:
    """Waking a VM that is not suspended is not an error either (QEMU's system_wakeup)."""
    reply = request(args.name, "wakeup")
    print(f"woke {args.name}" if reply["changed"] else f"{args.name} is not suspended ({state_text(reply)})")
    return 0


def cmd_regs(args: argparse.Namespace) -> int:

    for dump in request(args.name, "regs")["vcpus"]:
        print(dump.rstrip("\n"))
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    config = MachineConfig(mem_size=parse_size(args.mem, what="--mem"), demo_devices=not args.no_demo_devices)
    device_config(config, args)
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
