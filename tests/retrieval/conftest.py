"""Fixtures that write tiny real datasets (helpers in data_testing.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from data_testing import TinyDataset, make_tiny_karpathy


@pytest.fixture
def make_karpathy(tmp_path: Path) -> Callable[..., TinyDataset]:
    """Factory: `make_karpathy({"train": 4, "test": 2}, captions=3)` → a TinyDataset with real PNGs."""

    def make(splits: dict[str, int] | None = None, captions: int = 3, size: int = 16) -> TinyDataset:
        return make_tiny_karpathy(tmp_path, splits or {"train": 4, "val": 2, "test": 2}, captions, size)

    return make


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """A small synthetic dataset (60 images: 48/6/6, 32 px), generated once per test session."""
    from retrieval.data.synth.generate import generate

    out = tmp_path_factory.mktemp("synth") / "synth"
    data = generate(out, n_images=60, seed=3, size=32, workers=1, progress=False)
    return TinyDataset(data, out / "images", json.loads(data.read_text())["images"])
