"""Issue 2 acceptance: synchronous PIO and MMIO under /dev/kvm with real guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.core.memory import GiB, MiB
from tests.kvm.helpers import broiler_cli, passed, run_guest

pytestmark = pytest.mark.kvm


def test_sync_guest_checks_every_width_string_io_and_unmapped() -> None:
    run = run_guest("sync_test")
    assert passed(run.status), run.output
    assert "sync_test: 0 failures" in run.output
    assert "rep-outsb\n" in run.output  # bytes of rep outsb reached the UART in order
    pio = {r.name: r for r in run.machine.pio_bus.regions()}
    mmio = {r.name: r for r in run.machine.mmio_bus.regions()}
    # 5 dword reads + inb + inw + 3 from rep insl; writes: SLOT_SEL, SLOT_NUM
    assert pio["sync-pio"].stats.reads == 10
    assert pio["sync-pio"].stats.writes == 2
    assert mmio["sync-mmio"].stats.reads == 7
    assert mmio["sync-mmio"].stats.writes == 1
    # unmapped reads were counted per address, not crashed on
    assert sum(run.machine.pio_bus.unmapped.values()) == 7  # inb/inw/inl + rep insw x4
    assert sum(run.machine.mmio_bus.unmapped.values()) == 4


def test_high_ram_above_4g_is_seen_by_the_host() -> None:
    run = run_guest("highmem", mem=5 * GiB)
    assert passed(run.status), run.output
    assert run.machine.memory.read_int(0x1_0000_0000, 8) == 0x0123456789ABCDEF
    assert run.machine.memory.read_int(0x1_0000_0008, 4) == 0xFEEDFACE


def test_hostile_guest_leaves_vmm_running_and_read_only_registers_intact() -> None:
    run = run_guest("hammer")
    assert passed(run.status), run.output
    devices = {r.name: r.device for r in run.machine.pio_bus.regions() + run.machine.mmio_bus.regions()}
    for name in ("sync-pio", "sync-mmio"):
        regs = devices[name].regs  # type: ignore[attr-defined]
        assert regs[0x8] == 0x10 and regs[0xC] == 0x40
        assert devices[name].guest_errors > 0
    assert sum(run.machine.pio_bus.straddled.values()) > 0
    assert sum(run.machine.mmio_bus.straddled.values()) > 0


def test_debug_exit_status_is_the_process_status(tmp_path) -> None:  # noqa: ANN001
    from broiler.guests import packaged_guest

    image = tmp_path / "exit.bin"
    # mov eax, 0x21; out 0xf4, eax  →  status (0x21 << 1) | 1 = 0x43
    image.write_bytes(bytes([0xB8, 0x21, 0, 0, 0, 0xE7, 0xF4, 0xF4]))
    proc = broiler_cli("run", "--guest", str(image), "--timeout", "30")
    assert proc.returncode == 0x43, proc.stderr
    assert packaged_guest("demo")  # the demo image ships in the package


def test_timeout_kills_a_stuck_guest(tmp_path) -> None:  # noqa: ANN001
    image = tmp_path / "spin.bin"
    image.write_bytes(bytes([0xEB, 0xFE]))  # jmp .
    proc = broiler_cli("run", "--guest", str(image), "--timeout", "1")
    assert proc.returncode == exitcodes.TIMEOUT
    assert "timeout" in proc.stderr


def test_triple_fault_gives_a_register_dump(tmp_path) -> None:  # noqa: ANN001
    image = tmp_path / "ud.bin"
    image.write_bytes(bytes([0x0F, 0x0B]))  # ud2 with no IDT → triple fault
    proc = broiler_cli("run", "--guest", str(image), "--timeout", "30")
    assert proc.returncode == exitcodes.GUEST_FATAL, proc.stderr
    assert "rip=" in proc.stderr and "cr3=" in proc.stderr


def test_demo_runs_and_prints_the_io_table() -> None:
    proc = broiler_cli("run", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert "SLOT_NUM  = 0x20" in proc.stdout
    assert "sync-pio" in proc.stdout and "sync-mmio" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guest", "/nonexistent/image"], "does not exist"),
        (["--mem", "0"], "too small"),
        (["--mem", "10T"], "exceeds this host"),
        (["--mem", "lots"], "bad --mem"),
        (["--cpus", "0"], "--cpus"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    proc = broiler_cli("run", *args)
    assert proc.returncode == exitcodes.USAGE
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_empty_and_too_large_images(tmp_path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    proc = broiler_cli("run", "--guest", str(empty))
    assert proc.returncode == exitcodes.USAGE and "empty" in proc.stderr
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * (5 * MiB))
    proc = broiler_cli("run", "--guest", str(big), "--mem", "4M")
    assert proc.returncode == exitcodes.USAGE and "does not fit" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signals_stop_the_vm_cleanly(tmp_path, signame: str) -> None:  # noqa: ANN001
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    image = tmp_path / "spin.bin"
    image.write_bytes(bytes([0xEB, 0xFE]))  # jmp .
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "broiler", "run", "--guest", str(image), "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Signal the running VM, not the start-up (a loaded host can take seconds to import): the control
    # socket appears just before the run begins.
    deadline = time.monotonic() + 60
    while not list((tmp_path / "broiler").glob("*.sock")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == exitcodes.INTERRUPTED, err
    assert "Traceback" not in err


@pytest.mark.parametrize("guest", ["sync_test", "hammer", "async_test"])
def test_compiled_and_python_exit_loops_agree(guest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled fast path (where built) and the pure-Python loop see exactly the same IO."""
    from broiler.core import vcpu

    def io_counts(run) -> dict:  # noqa: ANN001
        m = run.machine
        return {
            (b.name, r.name): (r.stats.reads, r.stats.writes, r.stats.coalesced)
            for b in (m.pio_bus, m.mmio_bus)
            for r in b.regions()
        }

    monkeypatch.setenv("BROILER_PURE_PYTHON", "1")
    pure = run_guest(guest, async_delay=0.0)
    assert not pure.machine.threads[0].compiled
    monkeypatch.delenv("BROILER_PURE_PYTHON")
    default = run_guest(guest, async_delay=0.0)
    assert default.machine.threads[0].compiled == (vcpu._fastexit is not None)
    assert passed(pure.status) and passed(default.status), pure.output + default.output
    assert io_counts(pure) == io_counts(default)
    assert pure.output == default.output


def test_ctrl_a_x_ends_the_vm_with_its_own_status(tmp_path: Path) -> None:
    """Ctrl-A x at the serial console: status 12 (not a guest power-off), and the message on its own line."""
    import os
    import pty
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    image = tmp_path / "spin.bin"
    image.write_bytes(bytes([0xEB, 0xFE]))  # jmp .
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broiler", "run", "--guest", str(image), "--console", "serial", "--timeout", "60"],
        stdin=follower,
        stdout=follower,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(follower)
    try:
        time.sleep(1.5)
        os.write(leader, b"\x01x")
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(leader)
    assert proc.returncode == exitcodes.USER_QUIT, err
    assert err.startswith("\nbroiler: you ended the VM (Ctrl-A x)"), err
