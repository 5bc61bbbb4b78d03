"""AdamW with the usual CLIP parameter groups, and a cosine schedule with linear warm-up (checkpointable)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.lr_scheduler import LambdaLR

import enn

log = logging.getLogger(__name__)


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies, chosen so an ENN layer decays exactly like the plain layer it replaces.

    AdamW's decoupled decay of a plain weight is W ← (1 − lr·wd)·W. For W = Q·diag(Λ)·Pᵀ that is
    Λ ← (1 − lr·wd)·Λ with the bases untouched, in every ortho mode (W is linear in Λ). So Λ ("eigen") is
    decayed although it is 1-D, and Q/P ("basis", `Q_raw`/`P_raw` in exact mode) are not: decaying them
    would shrink W twice per step and fight the orthogonality penalty (penalty mode), or do nothing at all
    (exact mode, where QR ignores the raw factors' scale). Other tensors follow open_clip's training
    script: matrices decayed; biases, norms, gains, class embedding (ndim < 2) and logit_scale not.
    """
    role = enn.parameter_role(name)
    if role != "other":
        return role == "eigen"
    return param.ndim >= 2 and "logit_scale" not in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters: decayed and not decayed (see `decays`)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    log.info("optimizer: %d tensors with weight decay, %d without", len(decay), len(no_decay))
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train_cfg: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW from the `training` section (lr, betas, eps, weight_decay) over `param_groups(model)`.

    ENN weights in exact mode are retracted after every step (`enn.retract_after_step`), so every trainer
    that builds its optimizer here (backprop and each ENN-ℓ stage) keeps their raw factors well conditioned.
    Only trainable ones: a locked tower's factors (`model.lock_*`) are neither optimized nor retracted, so
    they stay bit for bit what they were.
    """
    groups = param_groups(model, float(train_cfg["weight_decay"]))
    optimizer = torch.optim.AdamW(
        groups,
        lr=float(train_cfg["lr"]),
        betas=tuple(float(b) for b in train_cfg["betas"]),
        eps=float(train_cfg["eps"]),
        fused=_fused_kernel_runs_on(p for group in groups for p in group["params"]),
    )
    enn.retract_after_step(optimizer, _trainable_enn_layers(model))
    return optimizer


def _fused_kernel_runs_on(params: Iterable[torch.Tensor]) -> bool | None:
    """Whether to ask for AdamW's fused kernel: one pass over each tensor instead of a dozen elementwise ops.
    On CPU it steps the demo model 6× faster (164 → 26 ms a step plain, 193 → 40 ms ENN, docs/results.md), a
    tenth of the step. torch's default leaves it off; it runs on float tensors of CPU and CUDA devices."""
    params = list(params)
    supported = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if supported else None


def _trainable_enn_layers(model: nn.Module) -> nn.ModuleList:
    """The ENN-parameterised layers of `model` whose factors require gradients (a view; the layers are shared)."""
    return nn.ModuleList(
        layer for layer in model.modules()
        if parametrize.is_parametrized(layer) and any(p.requires_grad for p in layer.parametrizations.parameters())
    )


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at `step`: linear 0→1 over `warmup_steps` (counting from 1), then cosine 1→0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(train_cfg: Mapping[str, Any], steps_per_epoch: int) -> int:
    """The run's length in optimizer steps, which its schedule spans: `training.total_steps` when set (a budget
    in steps, e.g. the steps another variant takes in the same wall-clock time), else epochs × steps per epoch."""
    total = train_cfg["total_steps"]
    return int(total) if total is not None else int(train_cfg["epochs"]) * steps_per_epoch


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Mapping[str, Any], total_steps: int) -> LambdaLR:
    """Cosine decay with linear warm-up as a `LambdaLR`, so its position is saved in `state_dict()`.

    `total_steps` is the length of the whole schedule (`schedule_steps`); step it once per
    optimizer step. `training.max_steps` only stops a run early and does not change the schedule, so a run
    cut short and resumed follows the same learning rates as an uninterrupted one.
    """
    warmup = int(train_cfg["warmup_steps"])
    return LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup, total_steps))
