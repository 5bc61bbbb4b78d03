"""`training.loss`: which of open_clip's contrastive losses a run trains with, and what each asks of the model.

- `clip`: symmetric softmax InfoNCE (open_clip's `ClipLoss`) with a learnable temperature.
- `siglip`: pairwise sigmoid loss (open_clip's `SigLipLoss`, Zhai et al. 2023) with a learnable temperature
  and a learnable logit bias b: every image–text pair is its own binary decision σ(t·⟨x, y⟩ + b).

SigLIP's start values come from open_clip's recipe: `open_clip_train --siglip` builds the model with
`init_logit_scale=log(10)` and `init_logit_bias=-10` (the paper's t' = log 10, b = −10, so that the ~B²
negative pairs do not swamp the first steps), and open_clip's SigLIP model configs carry `init_logit_bias`.
Both go into the open_clip model config, so a checkpoint or an exported open_clip folder rebuilds a model
that has the bias parameter; `training.init_temperature` applies to the softmax loss only.

This module is a leaf (no torch, no training code) so that the model factory can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from retrieval.errors import UserError

LOSSES = ("clip", "siglip")
SIGLIP_INIT = {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}


def check_loss(loss: Any) -> str:
    """`loss` if it is one of LOSSES, else a UserError naming the config key and the choices."""
    if loss not in LOSSES:
        raise UserError(f"config key training.loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    return str(loss)


def with_loss_init(model_cfg: Mapping[str, Any], loss: str) -> dict[str, Any]:
    """The open_clip model config `model_cfg` plus the start values `loss` needs (SIGLIP_INIT for siglip).

    A config that already names its `init_logit_bias` (an open_clip SigLIP config) keeps its own values.
    """
    if check_loss(loss) != "siglip" or "init_logit_bias" in model_cfg:
        return dict(model_cfg)
    return {**model_cfg, **SIGLIP_INIT}
