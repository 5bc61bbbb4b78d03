"""Fixtures shared by every test package: a tiny but real open_clip model config, small real disks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Tests run on 2 cores next to each other; keep each process to its share: both cores alone, one each under
# pytest-xdist (`make test` runs 2 workers).
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

TINY_MODEL_OVERRIDES = [
    "model.embed_dim=32",
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 64, heads: 2, layers: 2}",
]


@pytest.fixture
def tiny_config() -> dict:
    """A resolved run config for a 2-layer ViT + 2-layer text transformer (ENN-penalty)."""
    from retrieval.config import load_config

    return load_config(None, TINY_MODEL_OVERRIDES)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of a given size (e.g. "4m") under tmp_path: a real disk that fills up, for full-disk
    tests. Needs root; unmounted after the test."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)
