"""Fixtures of the KVM tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kvm.helpers import cli_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A `broiler` child's environment with the test's own control-socket folder (helpers.cli_env)."""
    return cli_env(tmp_path)
