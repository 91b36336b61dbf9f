"""User-mode `syscall` / `sysretq` round trips through broiler's syscall assist (docs/linux.md §7)."""

from __future__ import annotations

import pytest

from broiler.boot.linux import host_is_pvm
from broiler.cli import packaged_guest
from broiler.emulate.syscall import TRAMPOLINE_VA
from broiler.machine import Machine, MachineConfig
from broiler.memory import MiB

from .helpers import passed

pytestmark = pytest.mark.kvm

SPARE_TABLES = (0x90000, 0x91000, 0x92000)   # guests/syscall_test.c: SPARE_TABLES
SYSCALLS = 1014                              # 1011 from user_main, 3 from user_jumper (one is the jump)


def _run(assist: bool) -> tuple[int, str, Machine]:
    out: list[bytes] = []
    machine = Machine(MachineConfig(mem_size=64 * MiB, serial_output=out.append))
    machine.load_flat64(packaged_guest("syscall_test"))
    if assist:
        machine.enable_syscall_assist(SPARE_TABLES)
    status = machine.run(timeout=60)
    return status, b"".join(out).decode(errors="replace"), machine


def test_user_mode_syscalls_reach_the_kernel_and_come_back() -> None:
    status, output, machine = _run(assist=True)
    assert passed(status), output
    assert "syscall_test: 1004 getpid calls, 0 failures" in output
    assist = machine.syscall_assist
    assert assist is not None and assist.problem is None
    assert assist.syscalls == SYSCALLS
    # the guest's LSTAR is kept for RDMSR, the CPU's points at the trampoline, mapped where promised
    assert assist.lstar[0] >= 0xFFFFFFFF80000000
    assert machine.vcpus[0].get_msrs([0xC0000082])[0xC0000082] == TRAMPOLINE_VA
    pte = machine.memory.read_int(SPARE_TABLES[2], 8)
    assert pte & ~0x60 == 0xFEBFF000 | 0b101      # present, user, read-only (accessed/dirty aside)


@pytest.mark.skipif(not host_is_pvm(), reason="only KVM-PVM leaves a user-mode syscall at CPL3")
def test_without_the_assist_pvm_faults_in_the_kernel_entry() -> None:
    status, output, _ = _run(assist=False)
    assert status == (0x7F << 1) | 1
    assert "unexpected exception 14 at rip 0xffffffff801" in output
