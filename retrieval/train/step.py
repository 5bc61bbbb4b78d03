"""One optimizer step of contrastive training: open_clip's ClipLoss or SigLipLoss (+ ENN penalty), clipping,
temperature clamp.

Gradient accumulation: each micro-batch's loss uses only its own (global, across ranks) negatives; the
micro-batch losses are averaged and their gradients summed before one optimizer step. With
`accum_steps = 1` the loss sees the whole global batch, which is what the contrastive objective prefers;
accumulation only trades memory for fewer negatives per loss term.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn
from torch.nn.utils import parametrize

import enn
from enn.orthogonality import lazy_penalty_weight
from retrieval.device import autocast
from retrieval.errors import UserError
from retrieval.losses import check_loss
from retrieval.train.distributed import DistEnv

log = logging.getLogger(__name__)

ContrastiveLoss = ClipLoss | SigLipLoss


def build_loss(env: DistEnv, loss: str = "clip") -> ContrastiveLoss:
    """open_clip's loss for `training.loss` (clip | siglip); under DDP it covers the global batch.

    clip: with `gather_with_grad=True` and `local_loss=False` every rank computes the full global loss and
    the all-gather's backward sums the feature gradients from all ranks; DDP then averages parameter
    gradients, so the update equals a single process on the global batch.
    siglip: each rank scores its own images against every rank's texts (SigLipLoss passes the text
    features round the ranks, with gradients), so rank r's loss is its 1/world_size share of the global
    sum; DDP's gradient average is then again the single-process gradient on the global batch.
    """
    if check_loss(loss) == "siglip":
        return SigLipLoss(rank=env.rank, world_size=env.world_size)
    return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=env.rank, world_size=env.world_size)


def penalty_weight(enn_cfg: Mapping[str, Any]) -> float:
    """λ of the orthogonality penalty: `enn.lambda` in penalty mode, else 0 (exact mode is orthonormal already)."""
    if enn_cfg["enabled"] and enn_cfg["ortho"] == "penalty":
        return float(enn_cfg["lambda"])
    return 0.0


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Start the learnable temperature at `temperature` (logit_scale = ln(1/temperature)): the softmax loss's
    start. A model built for SigLIP (it has a `logit_bias`) keeps open_clip's SigLIP start instead (scale
    10, bias −10; retrieval.losses)."""
    if getattr(model, "logit_bias", None) is not None:
        log.info("training.loss=siglip: logit_scale starts at %.3f and logit_bias at %.1f (open_clip's SigLIP "
                 "init); training.init_temperature is not used", float(model.logit_scale.detach()),
                 float(model.logit_bias.detach()))
        return
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / temperature))


def clamp_logit_scale(model: nn.Module, max_logit_scale: float) -> None:
    """Keep 1/temperature ≤ max_logit_scale (CLIP's 100), as open_clip does after every step."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_logit_scale))


@dataclass
class StepResult:
    """What one optimizer step reports: mean micro-batch losses, gradient norm before clipping, the lr used."""

    loss: float
    contrastive: float
    penalty: float | None  # None on the steps a lazy penalty (`enn.penalty_every`) skips
    grad_norm: float
    lr: float


def forward_loss(
    model: nn.Module, loss_fn: ContrastiveLoss, images: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """The contrastive loss of one (micro-)batch through `model` (a CLIP, possibly DDP-wrapped).

    SigLipLoss also takes the model's learnable logit bias (open_clip's CLIP returns it as a 4th output).
    """
    out = model(images, tokens)
    if isinstance(out, dict):
        features = out["image_features"], out["text_features"], out["logit_scale"]
        logit_bias = out.get("logit_bias")
    else:
        features, logit_bias = out[:3], out[3] if len(out) > 3 else None
    if isinstance(loss_fn, SigLipLoss):
        if logit_bias is None:
            raise UserError("training.loss=siglip needs a model with a learnable logit_bias and this one has none "
                            "(a model.pretrained softmax-CLIP model: fine-tune it with training.loss=clip)")
        return loss_fn(*features, logit_bias)
    return loss_fn(*features)


def reported_loss(loss: torch.Tensor, loss_fn: ContrastiveLoss, env: DistEnv) -> float:
    """The global batch's loss value for the log: SigLipLoss gives each rank only its share, so average
    them (the mean of the rank shares is the single-process loss); ClipLoss is global on every rank."""
    value = loss.detach().float()
    if isinstance(loss_fn, SigLipLoss) and env.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


def train_step(
    model: nn.Module,
    core: nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Mapping[str, Any],
    env: DistEnv,
    step: int = 0,
) -> StepResult:
    """Forward/backward over the micro-batches, then clip, AdamW step, schedule step and temperature clamp.

    `model` is what runs forward (DDP wrapper or the model itself); `core` is the unwrapped model (the
    penalty, clipping and clamp act on it). `cfg` is the whole run config (training + enn sections); `step`
    the number of optimizer steps already taken (it decides whether a lazy penalty is due).
    """
    train_cfg = cfg["training"]
    lam = penalty_weight(cfg["enn"])
    weight = lazy_penalty_weight(lam, int(cfg["enn"]["penalty_every"]), step)
    n = len(micro_batches)
    image_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    contrastive_sum = 0.0
    penalty = None
    for i, (images, tokens) in enumerate(micro_batches):
        images = images.to(env.device, non_blocking=True, memory_format=image_format)
        tokens = tokens.to(env.device, non_blocking=True)
        # DDP all-reduces gradients only on the last micro-batch of the step.
        sync = i == n - 1 or not hasattr(model, "no_sync")
        # cached(): each ENN weight is materialised once per micro-batch, however often the forward reads it
        # (nn.MultiheadAttention reads in_proj_weight three times); the cache must not outlive the backward.
        with contextlib.nullcontext() if sync else model.no_sync(), parametrize.cached():
            with autocast(env.device, str(train_cfg["precision"])):
                contrastive = forward_loss(model, loss_fn, images, tokens)
            loss = contrastive / n
            if weight and i == n - 1:  # the penalty does not depend on the data: once per step, with the last micro-batch
                penalty = enn.orthogonality_loss(core)
                loss = loss + weight * penalty
            loss.backward()
        contrastive_sum += reported_loss(contrastive, loss_fn, env)
    clip = train_cfg["grad_clip"]
    params = [p for p in core.parameters() if p.grad is not None]
    if clip:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float(clip)))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    clamp_logit_scale(core, float(train_cfg["max_logit_scale"]))
    contrastive_mean = contrastive_sum / n
    if penalty is None:
        return StepResult(contrastive_mean, contrastive_mean, 0.0 if not lam else None, grad_norm, lr)
    penalty_value = float(penalty.detach())
    return StepResult(contrastive_mean + lam * penalty_value, contrastive_mean, penalty_value, grad_norm, lr)
