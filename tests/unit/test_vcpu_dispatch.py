"""VcpuThread._dispatch over a fake kvm_run page (a bytearray; no /dev/kvm): the real buses with tiny
devices, the VM's ExitTable, the emulation-failure chain and fatal stops."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import cast

import pytest

from broiler import exitcodes
from broiler.core import vcpu as vcpu_module
from broiler.core.bus import Device, MmioBus, PioBus
from broiler.core.coalesced import CoalescedRing
from broiler.core.exits import EmulationStage, ExitContext, ExitTable
from broiler.core.vcpu import VcpuThread
from broiler.errors import BroilerError, KvmError
from broiler.kvm import abi
from broiler.kvm.ioctls import Vcpu

PORT = 0x6060
MMIO = 0xD000_0000
RING_PAGE = 2  # where x86 KVM puts the coalesced ring in the vCPU mapping
DATA_OFFSET = 0x1000  # KVM puts PIO data after the kvm_run struct, on the next page


class Recorder(Device):
    """Reads return offset-derived values; every access is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        value = (0xA0 + offset) * 0x0101010101010101 & ((1 << (8 * size)) - 1)
        self.log.append(("r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


class FakeVcpu:
    """What VcpuThread reads off a kvm/ Vcpu, over a bytearray; register reads fail as KVM's would."""

    def __init__(self) -> None:
        self.id = 0
        self.fd = -1
        self.coalesced_page = RING_PAGE
        self.run_page = bytearray(4096 * (RING_PAGE + 1))

    def get_regs(self) -> abi.kvm_regs:
        raise KvmError("KVM_GET_REGS", 9, "Bad file descriptor")


class FakeControl:
    def __init__(self) -> None:
        self.stopping = False
        self.requests: list[tuple[int, str]] = []

    def request_exit(self, status: int, reason: str) -> None:
        self.requests.append((status, reason))
        self.stopping = True

    def vcpu_stopped(self) -> None:
        return None


class Rig:
    def __init__(self) -> None:
        self.pio_bus, self.mmio_bus = PioBus(), MmioBus()
        self.pio_dev, self.mmio_dev = Recorder(), Recorder()
        self.pio_bus.register(PORT, 0x10, self.pio_dev)
        self.mmio_bus.register(MMIO, 0x10, self.mmio_dev)
        self.control = FakeControl()
        self.exits = ExitTable(self.control)
        self.coalesced = CoalescedRing(self.pio_bus, self.mmio_bus)
        self.fake = FakeVcpu()
        self.thread = VcpuThread(
            cast(Vcpu, self.fake),
            pio_bus=self.pio_bus,
            mmio_bus=self.mmio_bus,
            exits=self.exits,
            coalesced=self.coalesced,
            control=self.control,
        )
        self.page = self.fake.run_page

    def exit(self, reason: int) -> None:
        struct.pack_into("<I", self.page, abi.RUN_EXIT_REASON, reason)

    def pio(self, port: int, size: int, count: int, *, out: bool, data: bytes = b"") -> None:
        self.exit(abi.KVM_EXIT_IO)
        struct.pack_into("<BBHIQ", self.page, abi.RUN_IO_DIRECTION, int(out), size, port, count, DATA_OFFSET)
        self.page[DATA_OFFSET : DATA_OFFSET + len(data)] = data

    def mmio(self, addr: int, size: int, *, write: bool, value: int = 0) -> None:
        self.exit(abi.KVM_EXIT_MMIO)
        struct.pack_into("<Q", self.page, abi.RUN_MMIO_PHYS_ADDR, addr)
        struct.pack_into("<Q", self.page, abi.RUN_MMIO_DATA, value)
        struct.pack_into("<I", self.page, abi.RUN_MMIO_LEN, size)
        self.page[abi.RUN_MMIO_IS_WRITE] = int(write)

    def internal_error(self, suberror: int) -> None:
        self.exit(abi.KVM_EXIT_INTERNAL_ERROR)
        struct.pack_into("<II", self.page, abi.RUN_INTERNAL_SUBERROR, suberror, 0)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_pio_out_and_in(rig: Rig) -> None:
    rig.pio(PORT + 4, 4, 1, out=True, data=struct.pack("<I", 0x12345678))
    assert rig.thread._dispatch() is True
    rig.pio(PORT + 2, 2, 1, out=False)
    assert rig.thread._dispatch() is True
    assert rig.pio_dev.log == [("w", 4, 4, 0x12345678), ("r", 2, 2, 0xA2A2)]
    assert rig.page[DATA_OFFSET : DATA_OFFSET + 2] == b"\xa2\xa2"
    assert rig.thread.exit_counts[abi.KVM_EXIT_IO] == 2


def test_string_pio_walks_the_data_page(rig: Rig) -> None:
    rig.pio(PORT, 2, 3, out=True, data=struct.pack("<3H", 0x1111, 0x2222, 0x3333))  # rep outsw
    assert rig.thread._dispatch() is True
    rig.pio(PORT + 1, 1, 4, out=False, data=b"\x00" * 4)  # rep insb
    assert rig.thread._dispatch() is True
    assert rig.pio_dev.log[:3] == [("w", 0, 2, 0x1111), ("w", 0, 2, 0x2222), ("w", 0, 2, 0x3333)]
    assert [entry[0] for entry in rig.pio_dev.log[3:]] == ["r"] * 4
    assert rig.page[DATA_OFFSET : DATA_OFFSET + 4] == b"\xa1" * 4


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_mmio_write_and_read(rig: Rig, size: int) -> None:
    value = 0x0102030405060708 & ((1 << (8 * size)) - 1)
    rig.mmio(MMIO + 8, size, write=True, value=value)
    assert rig.thread._dispatch() is True
    rig.mmio(MMIO + 8, size, write=False)
    assert rig.thread._dispatch() is True
    expected = 0xA8A8A8A8A8A8A8A8 & ((1 << (8 * size)) - 1)
    assert rig.mmio_dev.log == [("w", 8, size, value), ("r", 8, size, expected)]
    data = bytes(rig.page[abi.RUN_MMIO_DATA : abi.RUN_MMIO_DATA + 8])
    assert data == expected.to_bytes(size, "little") + bytes(8 - size)


def test_mmio_fragment_of_a_page_crossing_access(rig: Rig) -> None:
    rig.mmio(MMIO + 1, 3, write=True, value=0xCCBBAA)
    assert rig.thread._dispatch() is True
    rig.mmio(MMIO + 1, 3, write=False)
    assert rig.thread._dispatch() is True
    assert rig.mmio_dev.log == [("w", 1, 3, 0xCCBBAA), ("r", 1, 3, 0xA1A1A1)]
    assert bytes(rig.page[abi.RUN_MMIO_DATA : abi.RUN_MMIO_DATA + 3]) == b"\xa1" * 3


def test_unmapped_mmio_reads_all_ones_without_stopping(rig: Rig) -> None:
    rig.mmio(MMIO + 0x1000, 4, write=False)
    assert rig.thread._dispatch() is True
    assert bytes(rig.page[abi.RUN_MMIO_DATA : abi.RUN_MMIO_DATA + 4]) == b"\xff" * 4
    assert rig.control.requests == []


def test_a_registered_handler_gets_the_exit_and_answers_it(rig: Rig) -> None:
    seen: list[int] = []

    def rdmsr(ctx: ExitContext) -> bool:
        index, _ = ctx.msr_exit()
        seen.append(index)
        ctx.answer_msr(0xFEED, fault=False)
        return True

    rig.exits.register(abi.KVM_EXIT_X86_RDMSR, rdmsr)
    rig.exit(abi.KVM_EXIT_X86_RDMSR)
    struct.pack_into("<I", rig.page, abi.RUN_MSR_INDEX, 0xC0000082)
    rig.page[abi.RUN_MSR_ERROR] = 1
    assert rig.thread._dispatch() is True
    assert seen == [0xC0000082]
    assert struct.unpack_from("<Q", rig.page, abi.RUN_MSR_DATA)[0] == 0xFEED
    assert rig.page[abi.RUN_MSR_ERROR] == 0
    with pytest.raises(BroilerError, match="already registered"):
        rig.exits.register(abi.KVM_EXIT_X86_RDMSR, rdmsr)
    with pytest.raises(BroilerError, match="built in"):
        rig.exits.register(abi.KVM_EXIT_HLT, rdmsr)


def _chain(rig: Rig, trampoline_says: bool | None, completer_says: bool) -> list[str]:
    calls: list[str] = []

    def trampoline(ctx: ExitContext) -> bool | None:
        calls.append("trampoline")
        return trampoline_says

    def completer(ctx: ExitContext) -> bool:
        calls.append("completer")
        if not completer_says:
            ctx.fatal("emulation failure: no such instruction")
        return completer_says

    # registered in the "wrong" order on purpose: the stage decides, not who came first
    rig.exits.add_emulation_handler(EmulationStage.INSTRUCTION_COMPLETER, completer)
    rig.exits.add_emulation_handler(EmulationStage.SYSCALL_TRAMPOLINE, trampoline)
    return calls


def test_emulation_failures_go_through_the_chain_in_stage_order(rig: Rig) -> None:
    calls = _chain(rig, trampoline_says=None, completer_says=True)
    assert rig.exits.emulation_stages() == [EmulationStage.SYSCALL_TRAMPOLINE, EmulationStage.INSTRUCTION_COMPLETER]
    rig.internal_error(abi.KVM_INTERNAL_ERROR_EMULATION)
    assert rig.thread._dispatch() is True
    assert calls == ["trampoline", "completer"]
    assert rig.control.requests == []
    with pytest.raises(BroilerError, match="SYSCALL_TRAMPOLINE"):
        rig.exits.add_emulation_handler(EmulationStage.SYSCALL_TRAMPOLINE, lambda ctx: None)


def test_a_claimed_emulation_failure_stops_the_chain(rig: Rig) -> None:
    calls = _chain(rig, trampoline_says=True, completer_says=True)
    rig.internal_error(abi.KVM_INTERNAL_ERROR_EMULATION)
    assert rig.thread._dispatch() is True
    assert calls == ["trampoline"]


def test_an_emulation_failure_nobody_completes_is_fatal(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    calls = _chain(rig, trampoline_says=None, completer_says=False)
    rig.internal_error(abi.KVM_INTERNAL_ERROR_EMULATION)
    assert rig.thread._dispatch() is False
    assert calls == ["trampoline", "completer"]
    assert rig.control.requests == [(exitcodes.GUEST_FATAL, "emulation failure: no such instruction")]
    assert "vCPU 0 stopped: emulation failure" in capsys.readouterr().err


def test_other_internal_errors_skip_the_chain(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    calls = _chain(rig, trampoline_says=True, completer_says=True)
    rig.internal_error(abi.KVM_INTERNAL_ERROR_DELIVERY_EV)
    assert rig.thread._dispatch() is False
    assert calls == []
    assert rig.control.requests == [(exitcodes.GUEST_FATAL, "internal error, suberror 3")]


def test_an_unhandled_reason_is_a_fatal_stop_request(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.exit(abi.KVM_EXIT_DEBUG)
    assert rig.thread._dispatch() is False
    assert rig.control.requests == [(exitcodes.GUEST_FATAL, "unhandled exit reason 4 (DEBUG)")]
    err = capsys.readouterr().err
    assert "vCPU 0 stopped: unhandled exit reason 4" in err and "registers unavailable" in err
    assert rig.thread.exit_counts[abi.KVM_EXIT_DEBUG] == 1


def test_system_events_and_hlt(rig: Rig) -> None:
    rig.exit(abi.KVM_EXIT_SYSTEM_EVENT)
    struct.pack_into("<I", rig.page, abi.RUN_SYSTEM_EVENT_TYPE, abi.KVM_SYSTEM_EVENT_RESET)
    assert rig.thread._dispatch() is False
    assert rig.control.requests == [(exitcodes.OK, "guest reset")]
    rig.exit(abi.KVM_EXIT_HLT)
    assert rig.thread._dispatch() is False
    assert rig.control.requests == [(exitcodes.OK, "guest reset")]  # HLT stops this vCPU only


LOOPS = [False] + ([True] if vcpu_module._fastexit is not None else [])


@pytest.mark.parametrize("compiled", LOOPS, ids=lambda c: "compiled" if c else "python")
def test_the_coalesced_ring_replays_onto_the_buses(rig: Rig, compiled: bool) -> None:
    rig.thread.compiled = compiled
    ring = RING_PAGE * 4096
    last_slot = abi.KVM_COALESCED_MMIO_MAX - 1  # the ring wraps after this one
    entries = [(last_slot, MMIO + 4, 4, 0, 0xDEADBEEF), (0, PORT + 1, 1, 1, 0x5A), (1, MMIO + 8, 8, 0, 1 << 63)]
    for slot, phys, length, pio, value in entries:
        struct.pack_into("<QII8s", rig.page, ring + 8 + 24 * slot, phys, length, pio, value.to_bytes(8, "little"))
    struct.pack_into("<II", rig.page, ring, last_slot, 2)
    assert rig.thread.drain_coalesced() == 3
    assert rig.mmio_dev.log == [("w", 4, 4, 0xDEADBEEF), ("w", 8, 8, 1 << 63)]
    assert rig.pio_dev.log == [("w", 1, 1, 0x5A)]
    assert struct.unpack_from("<II", rig.page, ring) == (2, 2)
    assert rig.thread.drain_coalesced() == 0


@pytest.mark.parametrize("compiled", LOOPS, ids=lambda c: "compiled" if c else "python")
def test_an_entry_whose_replay_raised_stays_in_the_ring(rig: Rig, compiled: bool) -> None:
    rig.thread.compiled = compiled
    ring = RING_PAGE * 4096

    def refuse(offset: int, size: int, value: int) -> None:
        raise RuntimeError("device refused")

    rig.mmio_dev.coalesced_write = refuse  # type: ignore[method-assign]
    struct.pack_into("<QII8s", rig.page, ring + 8, PORT, 2, 1, (7).to_bytes(8, "little"))
    struct.pack_into("<QII8s", rig.page, ring + 32, MMIO, 4, 0, (9).to_bytes(8, "little"))
    struct.pack_into("<II", rig.page, ring, 0, 2)
    with pytest.raises(RuntimeError, match="device refused"):
        rig.thread.drain_coalesced()
    assert rig.pio_dev.log == [("w", 0, 2, 7)]
    assert struct.unpack_from("<II", rig.page, ring) == (1, 2)  # the refused entry is still there


@pytest.mark.skipif(vcpu_module._fastexit is None, reason="the compiled exit loop is not built here")
def test_the_compiled_loop_reads_the_same_kvm_run_fields() -> None:
    offsets = vcpu_module._fastexit.run_offsets()  # type: ignore[union-attr]
    assert offsets and all(getattr(abi, name) == offset for name, offset in offsets.items()), offsets


def test_the_vcpu_loop_imports_nothing_above_core() -> None:
    """core/ sits below pci/, devices/, boot/, emulate/, vmm/ and frontend/: the loop and what it is
    handed must not reach up to the Machine, not even for type checking."""
    core = Path(vcpu_module.__file__).parent
    for name in ("vcpu.py", "exits.py", "coalesced.py", "dump.py"):
        tree = ast.parse((core / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 2, (name, node.module)
                if node.level == 2:  # from ..x import: only the basics and kvm/
                    assert (node.module or "").split(".")[0] in {"errors", "exitcodes", "inputs", "kvm", ""}, (
                        name,
                        node.module,
                    )


def test_emulated_counts_stay_bounded_whatever_the_guest_runs() -> None:
    """Completed instructions are counted by their text, operands included: a guest varying them must not
    grow the table (nor --stats-json) without end."""
    from broiler.core.vcpu import EMULATED_KINDS, OTHER_EMULATED

    rig = Rig()
    for displacement in range(EMULATED_KINDS * 4):
        rig.thread.note_emulated(f"popcnt rax,[rbx+{displacement:#x}]")
    rig.thread.note_emulated("syscall")
    counts = rig.thread.emulated
    assert len(counts) == EMULATED_KINDS + 1
    assert counts[OTHER_EMULATED] == EMULATED_KINDS * 3 + 1
    assert sum(counts.values()) == EMULATED_KINDS * 4 + 1
