"""The QEMU column of ``broiler bench``: one self-timed guest under broiler and under QEMU, in every round.

QEMU has no host side for the bench's control port, so these two columns do not use bench_io.bin: the
Multiboot kernel guests/multiboot/io_bench.c (broiler/guests/io_bench.elf) times each path itself with
rdtsc (N1 and N2 iterations, warm-up first) and prints raw TSC ticks per batch. The same kernel runs

- (c′) under broiler: a child ``broiler run -k io_bench.elf --testdev --no-demo-devices``;
- (e)  under QEMU: ``-M pc -cpu qemu64 -device pci-testdev`` on KVM, booted by qboot where it is installed
  (well under a second instead of SeaBIOS's seconds; the kernel places pci-testdev's BARs itself then).

Sync rows go to a port and a page that neither VMM decodes (a full exit to the VMM, which drops the
write or answers all ones / zeros); the ioeventfd rows use pci-testdev's wildcard-eventfd tests, which
both VMMs back with a KVM ioeventfd. The ticks become µs with the host's TSC rate as KVM reports it
(KVM_GET_TSC_KHZ on a scratch vCPU: the rate both guests see, since neither VMM scales it); the guest's
own PIT calibration is kept in the JSON as a cross-check. c′/e compares like with like; c′ beside (c)
shows how far guest-side timing agrees with the host-timed column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvmError
from ..kvm.ioctls import Kvm
from ..kvm.state import get_tsc_khz
from .qemu import (
    GUEST_DONE_STATUS,
    QEMU_BINARY,
    VmmResult,
    broiler_command,
    find_qboot,
    find_qemu,
    qemu_command,
    qemu_version,
    run_vmm,
)
from .stats import summarize

KERNEL = Path(__file__).resolve().parents[1] / "guests" / "io_bench.elf"
SELF_TIMED_PATHS = ("loop", "pio_out", "pio_in", "mmio_write", "mmio_read", "ioeventfd_pio", "ioeventfd_mmio")
COLUMNS = ("broiler_st", "qemu")  # (c′) broiler running the self-timed guest, (e) QEMU running it
RATIO_KEY = "cst_over_e"
NO_QEMU = f"n/a (no {QEMU_BINARY})"
NO_KERNEL = f"n/a (no {KERNEL.name})"
NO_EQUIVALENT = "— (no equivalent)"
BROILER_ARGS = ("--testdev", "--no-demo-devices")
QEMU_DEVICES = ("pci-testdev",)
SECONDS_PER_OP_BOUND = 2e-4  # a generous time-out: 200 µs per guest operation, plus boot

_BATCH = re.compile(r"^iobench: (?P<path>\w+) rep=(?P<rep>\d+) n=(?P<n>\d+) ticks=(?P<ticks>\d+)\s*$", re.M)
_START = re.compile(r"^iobench: start tsc_hz=(?P<hz>\d+) ", re.M)
_COUNT = re.compile(r"^iobench: (?P<path>\w+) device_count=(?P<count>\d+)\s*$", re.M)
_SKIPPED = re.compile(r"^iobench: (?P<path>\w+) skipped (?P<why>.+?)\s*$", re.M)


@dataclass
class SelfTimedRun:
    """One VMM's run of io_bench.elf: per path, TSC ticks per operation, one value per repetition."""

    vmm: str
    ticks_per_op: dict[str, list[float]] = field(default_factory=dict)
    guest_tsc_hz: int | None = None
    problem: str | None = None


def parse_output(vmm: str, text: str, status: int | None) -> SelfTimedRun:
    """The guest's lines -> ΔN ticks per operation; any sign of a broken run becomes ``problem``."""
    run = SelfTimedRun(vmm)
    start = _START.search(text)
    run.guest_tsc_hz = int(start["hz"]) if start else None
    batches: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for m in _BATCH.finditer(text):
        batches.setdefault((m["path"], int(m["rep"])), []).append((int(m["n"]), int(m["ticks"])))
    for (path, _rep), pair in sorted(batches.items()):
        if len(pair) == 2 and pair[0][0] != pair[1][0]:
            (n1, t1), (n2, t2) = sorted(pair)
            run.ticks_per_op.setdefault(path, []).append((t2 - t1) / (n2 - n1))
    counts = [(m["path"], int(m["count"])) for m in _COUNT.finditer(text)]
    problems = [f"{path}: {count} writes reached pci-testdev, not its ioeventfd" for path, count in counts if count]
    problems += [f"{m['path']} skipped: {m['why']}" for m in _SKIPPED.finditer(text)]
    if status is None:
        problems.append("killed at its time-out: " + VmmResult(text, status).tail())
    elif status != GUEST_DONE_STATUS or "iobench: done" not in text:
        problems.append(f"exit status {status}: " + VmmResult(text, status).tail())
    run.problem = "; ".join(problems) or None
    return run


def guest_cmdline(n1: int, n2: int, paths: list[str]) -> str:
    return f"n1={n1} n2={n2} reps=1 paths={','.join(paths)}"


def host_tsc_khz() -> int | None:
    """The TSC rate KVM gives a new vCPU (what both VMMs' guests count in), None if KVM will not say."""
    kvm = Kvm()
    try:
        vm = kvm.create_vm()
        try:
            vcpu = vm.create_vcpu(0)
            try:
                return get_tsc_khz(vcpu) or None
            finally:
                vcpu.close()
        finally:
            vm.close()
    except (KvmError, OSError):  # a KVM without KVM_GET_TSC_KHZ: the guest's own calibration serves
        return None
    finally:
        kvm.close()


class SelfTimedColumns:
    """Runs io_bench.elf under broiler and QEMU once per round and turns the ticks into row cells."""

    def __init__(self, paths: list[str], n1: int, n2: int, *, with_qemu: bool) -> None:
        self.paths = [p for p in SELF_TIMED_PATHS if p in paths]
        self.n1, self.n2 = n1, n2
        self.skipped = not with_qemu  # --no-qemu: no columns at all
        self.qemu = find_qemu() if with_qemu else None
        self.notes: list[str] = []
        self.unavailable: str | None = None  # what the cells say when nothing could run
        if with_qemu and self.qemu is None:
            self.unavailable = NO_QEMU
            self.notes.append(f"QEMU column: {QEMU_BINARY} is not installed; columns (c′) and (e) are not measured")
        elif with_qemu and not KERNEL.exists():
            self.unavailable = NO_KERNEL
            self.notes.append(f"QEMU column: {KERNEL} is missing (python guests/build.py)")
        self.active = self.qemu is not None and self.unavailable is None and bool(self.paths)
        self.tsc_khz = host_tsc_khz() if self.active else None
        self.qboot = find_qboot(self.qemu) if self.active and self.qemu else None  # io_bench.elf places its BARs
        self.samples: dict[str, dict[str, list[float]]] = {impl: {} for impl in COLUMNS}
        self.guest_tsc_hz: dict[str, list[int]] = {impl: [] for impl in COLUMNS}
        self.problems: dict[str, list[str]] = {impl: [] for impl in COLUMNS}

    def timeout(self) -> float:
        return 60 + 2 * len(self.paths) * (self.n1 + self.n2 + 50) * SECONDS_PER_OP_BOUND

    def commands(self) -> dict[str, list[str]]:
        assert self.qemu is not None
        append = guest_cmdline(self.n1, self.n2, self.paths)
        return {
            "broiler_st": broiler_command(KERNEL, append, self.timeout(), extra=BROILER_ARGS),
            "qemu": qemu_command(self.qemu, KERNEL, append, devices=QEMU_DEVICES, extra=self.firmware_args()),
        }

    def firmware_args(self) -> list[str]:
        return ["-bios", str(self.qboot)] if self.qboot else []

    def run_round(self, say: Callable[[str], None], label: str) -> None:
        if not self.active:
            return
        for impl, cmd in self.commands().items():
            say(f"{label}: self-timed guest under {'QEMU' if impl == 'qemu' else 'broiler'}")
            result = run_vmm(cmd, self.timeout() + 30)
            self.add(impl, parse_output(impl, result.text, result.status))

    def add(self, impl: str, run: SelfTimedRun) -> None:
        if run.problem and run.problem not in self.problems[impl]:
            self.problems[impl].append(run.problem)
        if run.guest_tsc_hz:
            self.guest_tsc_hz[impl].append(run.guest_tsc_hz)
        khz = self.tsc_khz or (run.guest_tsc_hz or 0) / 1000
        if not khz:
            return
        for path, values in run.ticks_per_op.items():
            self.samples[impl].setdefault(path, []).extend(v / khz * 1000 for v in values)

    def fill_row(self, row: dict[str, object]) -> None:
        """Adds the two cells, their reasons when empty, and c′/e to one path row of the document."""
        missing = row.setdefault("missing", {})
        assert isinstance(missing, dict)
        key = row["key"]
        for impl in COLUMNS:
            s = summarize(self.samples[impl].get(str(key), []))
            row[impl] = s.as_json() if s else None
            if s is None and not self.skipped:
                missing[impl] = self._why_missing(str(key))
        c, e = row["broiler_st"], row["qemu"]
        ratio = None
        if isinstance(c, dict) and isinstance(e, dict) and e["median_us"]:
            ratio = round(c["median_us"] / e["median_us"], 3)
        row[RATIO_KEY] = ratio

    def _why_missing(self, key: str) -> str:
        if key not in SELF_TIMED_PATHS:
            return NO_EQUIVALENT
        return self.unavailable or "n/a (see note)"

    def section(self) -> dict[str, object] | None:
        """The document's ``qemu`` entry: how the column was measured (None with --no-qemu)."""
        if self.skipped:
            return None
        return {
            "binary": self.qemu,
            "version": qemu_version(self.qemu) if self.qemu else None,
            "kernel": KERNEL.name,
            "firmware": "qboot" if self.qboot else "SeaBIOS (QEMU's default)",
            "commands": self.commands() if self.active else None,
            "tsc_khz": self.tsc_khz,
            "tsc_source": "KVM_GET_TSC_KHZ" if self.tsc_khz else "the guest's PIT calibration",
            "guest_tsc_hz": self.guest_tsc_hz,
            "problems": self.problems,
        }

    def all_notes(self) -> list[str]:
        notes = list(self.notes)
        for impl, problems in self.problems.items():
            notes += [f"self-timed guest under {'QEMU' if impl == 'qemu' else 'broiler'}: {p}" for p in problems]
        return notes
