"""User-mode `syscall` / `sysretq` round trips through broiler's syscall assist (docs/linux.md §7), and the
host probe that decides whether the assist is needed (broiler/kvm/hostprobe.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from broiler.core.memory import MiB
from broiler.emulate.syscall import TRAMPOLINE_VA
from broiler.emulate.syscall_assist import SyscallAssist
from broiler.guests import packaged_guest
from broiler.kvm.hostprobe import HostBehaviour, host_behaviour
from broiler.vmm.linux import decide_syscall_assist
from broiler.vmm.machine import Machine, MachineConfig
from tests.kvm.helpers import broiler_cli, passed, run_guest

pytestmark = pytest.mark.kvm

SPARE_TABLES = (0x90000, 0x91000, 0x92000)  # guests/syscall_test.c: SPARE_TABLES
SYSCALLS = 1014  # 1011 from user_main, 3 from user_jumper (one is the jump)
GP_LINE = "syscall_test: non-canonical LSTAR raised #GP"
ACCEPTED_LINE = "syscall_test: non-canonical LSTAR was accepted"


@dataclass
class SyscallRun:
    status: int
    output: str
    assist: SyscallAssist | None
    cpu_lstar: int  # the vCPU's LSTAR after the run (the trampoline when the assist is on)
    trampoline_pte: int  # what the assist wrote into the last spare table page


def _run(assist: bool) -> SyscallRun:
    out: list[bytes] = []
    with Machine(MachineConfig(mem_size=64 * MiB, serial_output=out.append)) as machine:
        machine.load_flat64(packaged_guest("syscall_test"))
        if assist:
            machine.enable_syscall_assist(SPARE_TABLES)
        status = machine.run(timeout=60)
        return SyscallRun(
            status,
            b"".join(out).decode(errors="replace"),
            machine.syscall_assist,
            machine.vcpus[0].get_msrs([0xC0000082])[0xC0000082],
            machine.memory.read_int(SPARE_TABLES[2], 8),
        )


def _probe() -> HostBehaviour:
    probe = host_behaviour()
    if probe.syscall_cpl is None or probe.noncanonical_lstar == "unknown":
        pytest.fail(f"the host probe gave no answer: {probe.detail}")
    return probe


def test_user_mode_syscalls_reach_the_kernel_and_come_back() -> None:
    """With the assist, whatever the host: every syscall completes, and broiler's MSR filter gives the
    guest hardware's answer to a non-canonical LSTAR (#GP, value kept)."""
    run = _run(assist=True)
    assert passed(run.status), run.output
    assert GP_LINE in run.output
    assert "syscall_test: 1004 getpid calls, 0 failures" in run.output
    assist = run.assist
    assert assist is not None and assist.problem is None
    assert assist.syscalls == SYSCALLS
    # the guest's LSTAR is kept for RDMSR, the CPU's points at the trampoline, mapped where promised
    assert assist.lstar[0] >= 0xFFFFFFFF80000000
    assert run.cpu_lstar == TRAMPOLINE_VA
    assert run.trampoline_pte & ~0x60 == 0xFEBFF000 | 0b101  # present, user, read-only (accessed/dirty aside)


def test_without_the_assist_the_guest_sees_what_the_probe_measured() -> None:
    """Without the assist the host's KVM alone runs the guest: it must behave as broiler's probe said —
    a syscall that stays at CPL3 faults on the supervisor-only kernel entry (#PF, error 5: user, present);
    one that reaches CPL0 works as on hardware. Both known behaviours are asserted; neither hangs."""
    probe = _probe()
    run = _run(assist=False)
    status, output = run.status, run.output
    assert (GP_LINE if probe.noncanonical_lstar == "#GP" else ACCEPTED_LINE) in output, (probe, output)
    if probe.syscall_cpl == 3:
        assert status == (0x7F << 1) | 1, output
        assert "unexpected exception 14 at rip 0xffffffff801" in output and "(error 0x5)" in output
    else:
        assert passed(status), output
        assert "syscall_test: 1004 getpid calls, 0 failures" in output


def test_the_probe_answers_and_auto_follows_it() -> None:
    probe = _probe()
    assert probe.release == os.uname().release
    assist, reason = decide_syscall_assist("auto")
    assert assist == (probe.syscall_cpl == 3)
    assert reason.startswith("auto: ") and probe.release in reason
    assert decide_syscall_assist("off") == (False, "--syscall-assist off")
    if not os.path.exists("/sys/module/kvm_pvm"):
        # hardware KVM (VT-x/AMD-V) runs these two instructions as the CPU does
        assert (probe.syscall_cpl, probe.noncanonical_lstar) == (0, "#GP"), probe


def test_broiler_host_prints_the_decision() -> None:
    result = broiler_cli("host", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    probe = _probe()
    assert data["syscall_cpl"] == probe.syscall_cpl
    assert data["syscall_assist_auto"] == probe.needs_syscall_assist
    text = broiler_cli("host", timeout=60).stdout
    assert f"--syscall-assist auto: {'on' if probe.needs_syscall_assist else 'off'}" in text


def test_fs_and_gs_bases_survive_the_assist_on_two_vcpus() -> None:
    """guests/fsbase_smp.c: on each of two vCPUs a user program switches its FS base through a system call
    (the kernel half writes MSR_FS_BASE between `swapgs`s, then `sysretq` or `iretq`) 1000 times, reading
    %fs:0 after it and after a call that leaves FS alone. The assist reads and writes back the vCPU's
    segments at every one of those calls (KVM_GET/SET_SREGS): no FS base may go stale or cross to the other
    vCPU, no kernel entry may see the other vCPU's GS (issue 18, docs/linux.md §8)."""
    out: list[bytes] = []
    with Machine(MachineConfig(mem_size=64 * MiB, cpus=2, serial_output=out.append)) as machine:
        machine.load_flat64(packaged_guest("fsbase_smp"))
        machine.enable_syscall_assist(SPARE_TABLES)  # guests/fsbase_smp.c uses the same three pages
        status = machine.run(timeout=60)
        assist = machine.syscall_assist
    output = b"".join(out).decode(errors="replace")
    assert passed(status), output
    for cpu in (0, 1):
        assert f"fsbase_smp: cpu {cpu}: 2001 syscalls, 0 wrong FS" in output, output
    assert assist is not None and assist.syscalls == 2 * 2001
    assert sorted(assist.lstar) == [0, 1]  # each vCPU's LSTAR write was trapped and kept


def test_a_reused_page_table_page_on_two_vcpus_is_not_stale() -> None:
    """guests/pt_reuse_smp.c, a model of the -c 2 Linux crash (docs/linux.md §8): the two vCPUs take turns
    building a fresh address space over one page-table page the other vCPU's previous space used (and still
    has loaded, as an idle CPU keeps an exited mm), filling its entries on user-mode page faults, and reading
    through them in user mode. 200 rounds of 8 reads: each must see the page the entry names, not a page an
    earlier round's entry named (a stale shadow translation)."""
    out: list[bytes] = []
    with Machine(MachineConfig(mem_size=64 * MiB, cpus=2, serial_output=out.append)) as machine:
        machine.load_flat64(packaged_guest("pt_reuse_smp"))
        machine.enable_syscall_assist(SPARE_TABLES)  # the rounds leave user mode through `syscall`
        status = machine.run(timeout=60)
    output = b"".join(out).decode(errors="replace")
    assert passed(status), output
    assert "pt_reuse_smp: 1600 faults" in output  # every read faulted its entry in: demand paging ran
    assert "pt_reuse_smp: 200 rounds, 0 stale reads" in output, output


def test_eight_byte_stores_reach_the_other_vcpu_whole() -> None:
    """guests/torn_smp.c: one vCPU stores aligned 8-byte words whose bytes are all equal, the other loads them
    while it does; no load may see a mix of two stores (Linux writes PTEs and pointers that way; on KVM-PVM both
    vCPUs run in KVM's instruction emulator at CPL0; docs/linux.md §8)."""
    run = run_guest("torn_smp", cpus=2)
    assert passed(run.status), run.output
    line = next(x for x in run.output.splitlines() if x.startswith("torn_smp:"))
    assert " 0 torn " in line, line
