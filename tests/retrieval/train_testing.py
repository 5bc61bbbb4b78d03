"""Helpers for the training tests: a tiny run config on the session's synth dataset, and reading runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from retrieval.config import load_config

# A 1-layer ViT (32 px, 16 patches) and 1-layer text transformer: a step takes milliseconds.
TINY_TRAIN_MODEL = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 1, head_width: 16, mlp_ratio: 2.0}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 1, mlp_ratio: 2.0}",
]


def train_overrides(dataset: Any, *extra: str) -> list[str]:
    """--set pairs: tiny model, the given TinyDataset, batch 8 (48 train images → 6 steps per epoch)."""
    return [
        *TINY_TRAIN_MODEL,
        f"data.path={dataset.data}",
        f"data.images={dataset.images}",
        "data.workers=0",
        "enn.lambda=1.0e-3",
        "training.batch_size=8",
        "training.epochs=2",
        "training.lr=2.0e-3",
        "training.warmup_steps=2",
        "training.log_every_steps=1",
        "training.save_every_steps=2",
        "training.eval_batch_size=16",
        "training.device=cpu",
        "training.threads=1",
        *extra,
    ]


def train_config(dataset: Any, *extra: str) -> dict[str, Any]:
    """The resolved config of `train_overrides`."""
    return load_config(None, train_overrides(dataset, *extra))


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state_dict stored in a checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a − b| over all floating tensors (the key sets must agree)."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Train with one intra-op thread: the tiny models' ops are too small to share, and on a busy 2-core
    machine two spinning OpenMP threads per process cost far more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
