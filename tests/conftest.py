"""Shared fixtures. KVM tests carry the ``kvm`` marker: without /dev/kvm they skip with the reason,
unless BROILER_REQUIRE_KVM=1 (set by .ci/run when /dev/kvm exists), in which case they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from broiler.core.eventloop import EventLoop

ROOT = Path(__file__).resolve().parent.parent


def kvm_unavailable_reason() -> str | None:
    from broiler.errors import KvmUnavailable
    from broiler.kvm import Kvm

    try:
        Kvm().close()
    except KvmUnavailable as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("kvm") for item in items):
        return
    reason = kvm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("BROILER_REQUIRE_KVM") == "1":
        raise pytest.UsageError(f"BROILER_REQUIRE_KVM=1 but KVM is unavailable: {reason}")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("kvm"):
            item.add_marker(skip)


@pytest.fixture
def guest_image() -> Iterator[object]:
    from broiler.guests import packaged_guest

    yield packaged_guest


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """A running event loop (core/eventloop.py), closed after the test."""
    loop = EventLoop()
    loop.start()
    yield loop
    loop.close()
