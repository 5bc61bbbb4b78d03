"""Fixtures shared by every test package: a tiny but real open_clip model config, small real disks."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# One intra-op thread per test process (`make test` runs 2 pytest-xdist workers on the 2 cores): the tensors are
# tiny, and a second OpenMP thread spin-waits on a busy core. At 2 threads, load 5, seven model/index/export files
# took 254 s (159 CPU-s) instead of 41 s (31 CPU-s); docs/results.md, issue 28.
torch.set_num_threads(1)

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
