"""Helpers for the pretrained-start tests: tiny open_clip configs, a tag of one, and an offline Hub cache.

The cache is laid out exactly as huggingface_hub writes it (models--ORG--NAME/refs/main +
snapshots/COMMIT/FILE), in a temporary folder, so open_clip, huggingface_hub and transformers read it as
they would read a user's ~/.cache/huggingface/hub with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
from safetensors.torch import save_file

# Two small open_clip configs (registered under these names), the second a wider variant of the first.
TINY = "rt-tiny-vit"
TINY_WIDE = "rt-tiny-vit-wide"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_WIDE_CFG = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "width": 96}}
TAG = "rt_test_tag"
TAG_REPO = "rt-test/tiny-clip"
TAG_MEAN = (0.5, 0.5, 0.5)  # not open_clip's default: shows the tag's preprocessing is used


def register_tiny_configs(folder: Path) -> None:
    """Make TINY and TINY_WIDE open_clip model configs (open_clip.add_model_config)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in ((TINY, TINY_CFG), (TINY_WIDE, TINY_WIDE_CFG)):
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def tag_cfg() -> dict:
    """open_clip's pretrained config of TAG (register it in open_clip.pretrained._PRETRAINED[TINY])."""
    return {"url": "", "hf_hub": f"{TAG_REPO}/", "mean": TAG_MEAN, "std": (0.25, 0.25, 0.25),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def use_offline_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read Hugging Face files from `cache` only, as HF_HUB_CACHE=cache HF_HUB_OFFLINE=1 would."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variables once at import; its functions look these attributes up per call.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path | str]) -> Path:
    """Store `files` (name → a file to link, or text) as revision `main` of `repo_id` in the Hub cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            target.symlink_to(content.resolve())
        else:
            target.write_text(content)
    return snapshot


def tiny_weights(name: str, folder: Path, seed: int = 0) -> Path:
    """A freshly initialised open_clip `name` model's weights, as open_clip_model.safetensors in `folder`."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    with torch.no_grad():  # a trained-looking temperature, so a start that resets it would show
        model.logit_scale.fill_(3.0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
