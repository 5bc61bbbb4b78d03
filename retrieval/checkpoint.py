"""The one checkpoint format, and loading a trained model for evaluation, indexing and serving.

A checkpoint is a dict: `config` (resolved run config), `model_cfg` / `preprocess_cfg` (open_clip's),
`model` (state_dict in ENN form), `optimizer`, `scheduler`, `step`, `epoch`, `rng`, `metrics`,
`fingerprint`. Files are written atomically so a crash never leaves a half-written `last.pt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import enn
from retrieval.config import from_dict
from retrieval.device import pick_device
from retrieval.errors import UserError
from retrieval.model import Towers, build_towers

FORMAT_VERSION = 1


def model_fingerprint(model_cfg: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """Identity of a trained model: architecture + every weight byte. Indexes record it, the server checks it."""
    digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode())
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch, so that resume replays the same randomness."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, towers: Towers, config: dict[str, Any], **state: Any) -> str:
    """Write a checkpoint atomically (temp file + fsync + rename); returns the model fingerprint.

    `state` holds the training state: optimizer, scheduler, step, epoch, metrics (state_dicts, not objects).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_state = {k: v.detach().cpu() for k, v in towers.model.state_dict().items()}
    fingerprint = model_fingerprint(towers.model_cfg, model_state)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "model_cfg": towers.model_cfg,
        "preprocess_cfg": towers.preprocess_cfg,
        "model": model_state,
        "rng": rng_state(),
        "fingerprint": fingerprint,
        **state,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return fingerprint


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on CPU, with a clear error for a missing or foreign file."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():
        path = path / "checkpoints" / "best.pt"  # a run directory stands for its best checkpoint
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples), not just tensors.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt or non-torch file
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_cfg" not in payload:
        raise UserError(f"{path}: not a retrieval checkpoint (no 'model'/'model_cfg' entries)")
    return payload


@dataclass
class LoadedModel:
    """A trained model ready to encode: what eval, embed, index and the service share."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image → tensor (deterministic, eval transform)
    tokenizer: Callable  # list[str] → LongTensor
    config: dict[str, Any]
    towers: Towers
    fingerprint: str
    device: torch.device
    precision: str

    @property
    def embed_dim(self) -> int:
        return int(self.towers.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.towers.model_cfg["text_cfg"].get("context_length", 77))


def towers_from_checkpoint(payload: dict[str, Any]) -> tuple[Towers, dict[str, Any]]:
    """Rebuild the towers a checkpoint was trained with (ENN form) and load its weights."""
    config = from_dict(payload["config"])
    towers = build_towers(config, model_cfg=payload["model_cfg"], preprocess_cfg=payload.get("preprocess_cfg"))
    towers.model.load_state_dict(payload["model"], strict=True)
    return towers, config


def load_model(path: str | Path, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """Load a checkpoint (or a run directory's best.pt) for inference, in eval mode on `device`.

    ENN weights are merged to plain ones (`enn.merge`, same outputs): inference then costs exactly what
    the plain model costs, instead of re-forming Q·diag(Λ)·Pᵀ at every read. The fingerprint stays the
    checkpoint's (ENN form), so indexes and the service recognise the model either way.
    """
    payload = read_checkpoint(path)
    towers, config = towers_from_checkpoint(payload)
    enn.merge(towers.model)
    target = pick_device(device)
    model = towers.model.to(target).eval()
    return LoadedModel(
        model=model,
        preprocess=towers.preprocess_val,
        tokenizer=towers.tokenizer,
        config=config,
        towers=towers,
        fingerprint=payload.get("fingerprint") or model_fingerprint(towers.model_cfg, payload["model"]),
        device=target,
        precision=precision,
    )
