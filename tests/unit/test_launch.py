"""broiler/__main__.py: a signal while the command line's modules are still importing ends with 130."""

from __future__ import annotations

import importlib.abc
import signal
import sys

import pytest

from broiler import exitcodes


class _InterruptingFinder(importlib.abc.MetaPathFinder):
    """Raises KeyboardInterrupt when the command line's module is imported, as a Ctrl-C at that moment does."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "broiler.frontend.cli":
            raise KeyboardInterrupt


def test_an_interrupt_while_importing_ends_with_status_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import broiler.__main__ as launcher

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.delitem(sys.modules, "broiler.frontend.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptingFinder(), *sys.meta_path])
    try:
        with pytest.raises(SystemExit) as ended:
            launcher.main()
        assert ended.value.code == exitcodes.INTERRUPTED
        assert signal.getsignal(signal.SIGTERM) is launcher._interrupted  # SIGTERM takes the same way out
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_console_script_and_python_m_share_one_entry() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["broiler"] == "broiler.__main__:main"
