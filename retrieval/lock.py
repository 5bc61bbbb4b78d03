"""LiT-style tower locking (Zhai et al. 2022), as open_clip's `--lock-image*` / `--lock-text*` flags do it.

The locking itself is open_clip's (`lock_image_tower`, `lock_text_tower`): a locked tower's parameters stop
requiring gradients, except its last N layer groups; `freeze_bn_stats` swaps a locked image tower's
BatchNorm layers for open_clip's frozen ones, so its statistics stay fixed in training mode too. The model
factory locks the plain model, then runs `enn.convert`, which gives each ENN factor (Q, Λ, P) its weight's
requires_grad: an ENN tower's frozen tensors are its factors. The optimizer only ever receives tensors that
require gradients (retrieval.train.optim).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from open_clip.hf_model import HFTextEncoder

from retrieval.errors import UserError

log = logging.getLogger(__name__)


def tower_parameters(model: torch.nn.Module, tower: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the image or text tower of an open_clip CLIP / CustomTextCLIP."""
    if tower == "image":
        return [(n, p) for n, p in model.named_parameters() if n.startswith("visual.")]
    if hasattr(model, "text"):
        return [(n, p) for n, p in model.named_parameters() if n.startswith("text.")]
    # CLIP keeps its text transformer's parts on the model itself; logit_scale/logit_bias are shared.
    return [(n, p) for n, p in model.named_parameters() if not n.startswith(("visual.", "logit_"))]


def _unlocked_groups(section: dict[str, Any], key: str) -> int:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"config key model.{key} must be a whole number ≥ 0, got {value!r}")
    return value


def lock_towers(model: torch.nn.Module, section: dict[str, Any]) -> None:
    """Apply `model.lock_image*` / `model.lock_text*` to `model` (in place)."""
    for tower in ("image", "text"):
        key = f"lock_{tower}_unlocked_groups"
        groups = _unlocked_groups(section, key)
        if not section[f"lock_{tower}"]:
            if groups:
                log.warning("model.%s=%d has no effect without model.lock_%s", key, groups, tower)
            continue
        try:
            if tower == "image":
                model.lock_image_tower(unlocked_groups=groups,
                                       freeze_bn_stats=bool(section["lock_image_freeze_bn_stats"]))
            else:
                freeze_norms = bool(section["lock_text_freeze_layer_norm"])
                if not freeze_norms and not isinstance(getattr(model, "text", None), HFTextEncoder):
                    raise UserError("model.lock_text_freeze_layer_norm=false needs a Hugging Face text tower: "
                                    "open_clip's text transformer locks its LayerNorms with the layers around them")
                model.lock_text_tower(unlocked_layers=groups, freeze_layer_norm=freeze_norms)
        except (AssertionError, RuntimeError, NotImplementedError) as err:  # what open_clip refuses for a tower
            name = type(model.visual if tower == "image" else getattr(model, "text", model)).__name__
            raise UserError(f"model.lock_{tower} with {key}={groups}: open_clip cannot lock {name} so "
                            f"({err or type(err).__name__})") from None
        params = tower_parameters(model, tower)
        frozen = sum(not p.requires_grad for _, p in params)
        if not frozen:
            raise UserError(f"model.{key}={groups} leaves the whole {tower} tower trainable: lower it, "
                            f"or set model.lock_{tower}: false")
        log.info("locked the %s tower: %d of %d tensors frozen (%d unlocked groups)", tower, frozen,
                 len(params), groups)
