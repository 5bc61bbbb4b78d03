"""Helpers shared by the enn tests: a tiny open_clip CLIP built from a config folder, tolerance check."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 64, "heads": 4, "layers": 2},
}


def write_clip_dir(folder: Path) -> Path:
    """Make ``folder`` something ``open_clip.create_model("local-dir:...")`` builds the tiny CLIP from."""
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    return folder


def make_clip(folder: Path, seed: int = 0) -> torch.nn.Module:
    """Fresh randomly initialised tiny CLIP in eval mode (open_clip's factory, as users build it)."""
    torch.manual_seed(seed)
    return open_clip.create_model(f"local-dir:{folder}").eval()


def clip_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A small batch of images and token ids matching TINY_CLIP."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 500, (3, 16), generator=g)
    return images, tokens


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """The product contract: max |diff| ≤ rel × output scale (max |expected|)."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} x scale {scale:.3g}"
