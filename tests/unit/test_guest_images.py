"""The guest images shipped in broiler/guests/ are exactly what guests/ builds with this machine's
gcc and binutils (so the package needs no compiler, and the sources are the truth)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _builder():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("guest_build", ROOT / "guests" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None, reason="needs gcc and ld")
def test_shipped_images_match_a_fresh_build(tmp_path: Path) -> None:
    build = _builder()
    built = build.build(tmp_path)
    assert built, "no guest sources found"
    shipped_dir = ROOT / "broiler" / "guests"
    for image in built:
        shipped = shipped_dir / image.name
        assert shipped.exists(), f"{image.name} is built but not shipped: run python guests/build.py"
        assert shipped.read_bytes() == image.read_bytes(), f"{image.name} is stale: run python guests/build.py"
    shipped_images = [*shipped_dir.glob("*.bin"), *shipped_dir.glob("*.elf")]
    extra = {p.name for p in shipped_images} - {p.name for p in built}
    assert not extra, f"shipped images without sources: {extra}"


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None, reason="needs gcc and ld")
def test_example_images_match_a_fresh_build(tmp_path: Path) -> None:
    built = _builder().build_examples(tmp_path)
    assert {p.name for p in built} == {p.name for p in (ROOT / "examples").glob("*.bin")}
    for image in built:
        assert (ROOT / "examples" / image.name).read_bytes() == image.read_bytes(), f"{image.name} is stale"
