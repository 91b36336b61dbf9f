"""Bad user input gets one clear line and exit status 2 before any VM exists (issue 13 item 2)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from broiler import exitcodes
from broiler.errors import ConfigError
from broiler.frontend.cli import main
from broiler.inputs import check_output, read_head, read_input


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--guest", "/dev/zero"], "is not a regular file"),
        (["run", "-k", "/dev/zero"], "is not a regular file"),
        (["run", "--guest", "FIFO"], "is not a regular file"),
        (["run", "--guest", "/"], "is a directory"),
        (["run", "--trace", ""], "--trace takes"),
        (["run", "--name", ""], "bad VM name ''"),
        (["run", "--stats-json", "/nonexistent/x.json"], "no directory '/nonexistent'"),
        (["run", "--stats-json", "/"], "it is a directory"),
        (["run", "--trace", "pio", "--trace-file", "/nonexistent/t.txt"], "no directory"),
        (["run", "--async-delay", "nan"], "--async-delay"),
        (["bench", "--json", "/nonexistent/x.json"], "no directory '/nonexistent'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [_fifo(tmp_path) if a == "FIFO" else a for a in args]
    assert main(args) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "x"])
def test_timeout_must_be_a_finite_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--timeout", value])
    assert exc.value.code == exitcodes.USAGE
    assert "--timeout" in capsys.readouterr().err


def test_multiboot_module_from_a_device_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    kernel = str(Path(__file__).parents[2] / "broiler" / "guests" / "mbtest.elf")
    assert main(["run", "-k", kernel, "-i", "/dev/zero"]) == exitcodes.USAGE
    assert "initrd '/dev/zero' is not a regular file" in capsys.readouterr().err


def test_image_larger_than_ram_is_refused_without_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: 1 GiB that costs nothing
        f.truncate(1 << 30)
    with pytest.raises(ConfigError, match="does not fit in guest RAM"):
        read_input(big, "guest image", limit=1 << 20)
    assert read_head(big, "kernel", 16) == bytes(16)


def test_check_output_accepts_a_writable_place(tmp_path: Path) -> None:
    check_output(tmp_path / "new.json", "--stats-json")
    with pytest.raises(ConfigError, match="needs a file name"):
        check_output("", "--stats-json")


def test_sigterm_before_the_vm_runs_is_status_130(tmp_path: Path) -> None:
    """SIGTERM while broiler is still reading its inputs ends it like SIGTERM during the run: 130."""
    import subprocess
    import sys
    import time

    fifo = _fifo(tmp_path)
    code = (
        "import sys; from broiler import inputs; from broiler.frontend import cli; "
        "inputs.check_input = lambda *a, **k: 0; sys.exit(cli.main(sys.argv[1:]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--guest", fifo], stderr=subprocess.PIPE, text=True)
    # Wait until it is blocked on the FIFO (the regular-file check is patched out to get here), not for
    # a fixed time: a writer's non-blocking open succeeds only once broiler holds the read side. Holding
    # the write end open (and writing nothing) keeps it blocked, now reading the input.
    deadline = time.monotonic() + 30
    writer = -1
    while writer < 0:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "broiler never opened its input"
            time.sleep(0.02)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(writer)
    assert proc.returncode == exitcodes.INTERRUPTED, err
    assert "Traceback" not in err
