"""Fixtures shared by every test package: a tiny but real open_clip model config."""

from __future__ import annotations

import pytest
import torch

# Tests run on 2 cores next to each other; keep each process to its share.
torch.set_num_threads(2)

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
