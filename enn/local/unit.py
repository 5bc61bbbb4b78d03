"""A local-learning unit: stage k of both towers, trained on its own contrastive loss with its own optimizer.

Unit k reads the *detached* outputs of unit k−1 for batch t, computes its local loss (stage-k image and
text features through its head, symmetric InfoNCE, + λ × the ENN orthogonality penalty of its own
weights), steps its own optimizer and scheduler, and hands its detached outputs on. No gradient ever
crosses a unit boundary, so unit k's update for batch t depends only on its inputs for batch t — which is
what lets units run pipelined in separate processes without any staleness (see `enn.local.pipeline`).
The last unit trains the model's real head (ln/pool/projection) on the ordinary CLIP loss with the
model's own `logit_scale`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from enn.local.heads import LocalHead, attention_readout, next_layer_readout
from enn.local.stages import TowerStage, VitStage, chain_stages, split_clip
from enn.orthogonality import lazy_penalty_weight, orthogonality_error, orthogonality_loss

# (image input, text input, token ids) of one micro-batch; stage 0 gets (pixels, ids, ids).
Micro = tuple[Tensor, Tensor, Tensor]
# loss_fn(image_features, text_features, logit_scale.exp()) -> scalar, e.g. open_clip's ClipLoss.
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class LocalUnit(nn.Module):
    """Stage `index` of the image and text towers + its local head (or, last, the model's logit scale).

    Call `attach(optimizer, scheduler)` once built, then `train_step(micro_batches)` per optimizer step.
    """

    def __init__(
        self,
        image: TowerStage,
        text: TowerStage,
        loss_fn: LossFn,
        head: LocalHead | None = None,
        logit_scale: nn.Parameter | None = None,
        ortho_weight: float = 0.0,
        penalty_every: int = 1,
        grad_clip: float | None = None,
        max_logit_scale: float = 100.0,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        super().__init__()
        if image.index != text.index or image.count != text.count:
            raise ValueError("a unit pairs the image and text stages of the same index")
        self.index, self.count = image.index, image.count
        self.image, self.text = image, text
        if image.is_last:
            if logit_scale is None:
                raise ValueError("the last unit trains the model's logit_scale: pass it")
            self.logit_scale = logit_scale
        elif head is None:
            raise ValueError(f"unit {self.index} is not the last one: it needs a local head")
        self.head = head if not image.is_last else None
        self._loss_fn = (loss_fn,)  # a tuple: the loss is not part of this module's state
        self.ortho_weight, self.grad_clip, self.max_logit_scale = ortho_weight, grad_clip, max_logit_scale
        if penalty_every < 1:
            raise ValueError(f"penalty_every must be a positive integer, got {penalty_every}")
        self.penalty_every = penalty_every
        self.steps_taken = 0  # decides which steps carry the lazy penalty; kept in the training state
        self._last_penalty = 0.0
        self.autocast = autocast
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.state_keys: dict[str, Tensor] = {}  # model state_dict key -> tensor this unit owns

    @property
    def is_last(self) -> bool:
        return self.image.is_last

    def attach(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Give the unit its own optimizer (over `self.parameters()`) and learning-rate schedule."""
        self.optimizer, self.scheduler = optimizer, scheduler

    def model_tensors(self) -> list[Tensor]:
        """Parameters and buffers of the CLIP model this unit owns (not its local head)."""
        own = [*self.image.parameters(), *self.image.buffers(), *self.text.parameters(), *self.text.buffers()]
        return [*own, self.logit_scale] if self.is_last else own

    def forward(self, micro: Micro, target: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(image output, text output, contrastive loss) of one micro-batch; inputs are detached here.

        `target` (cross-depth targets, non-last units): the towers' final (image, text) embeddings of the
        same samples, L2-normalised and detached. The loss is then ½ · (stage image ↔ stage text) + ¼ ·
        (stage image ↔ final text) + ¼ · (final image ↔ stage text): each stage also learns to agree with
        what the *other* tower finally makes of the pair, not only with its own depth's view of it."""
        device = next(self.parameters()).device
        with self.autocast():
            image, text, img_feat, txt_feat = self.features(micro)
            scale = self.logit_scale if self.is_last else self.head.logit_scale
            loss = self._loss_fn[0](img_feat, txt_feat, scale.exp())
            if target is not None and not self.is_last:
                final_image, final_text = (t.to(device) for t in target)
                cross = self._loss_fn[0](img_feat, final_text, scale.exp()) + self._loss_fn[0](final_image, txt_feat, scale.exp())
                loss = 0.5 * loss + 0.25 * cross
        return image, text, loss

    def features(self, micro: Micro) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(image output, text output, image feature, text feature): the stage outputs (the next unit's
        inputs) and the L2-normalised pair the loss compares (through the local head; last: the model's
        embeddings). Also what a per-stage recall reads (`retrieval.train.local_probe`)."""
        device = next(self.parameters()).device
        image, text, tokens = (t.detach().to(device, non_blocking=True) for t in micro)
        image = self.image(image, tokens)
        text = self.text(text, tokens)
        if self.is_last:
            return image, text, F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image_h, text_h = self.head.refine(image, text, self.text.attn_mask_for_head)
        readout = self.head.image_readout
        image_v = readout(image_h) if readout is not None else self.image.pool(image_h, tokens)
        return image, text, *self.head(image_v, self.text.pool(text_h, tokens))

    def train_step(self, micro_batches: Sequence[Micro], monitor: bool = False,
                   targets: Sequence[tuple[Tensor, Tensor]] | None = None) -> tuple[list[Micro], dict[str, float]]:
        """One optimizer step over `micro_batches` (gradients accumulated); returns the detached outputs
        (the next unit's inputs) and this unit's metrics (`stage{k}_*`, and `lr`, the rate this step
        used). `monitor` adds `stage{k}_ortho_error` (enn.orthogonality_error of the stage, after the step).
        `targets`: one cross-depth target per micro-batch (see `forward`), or None."""
        if self.optimizer is None:
            raise RuntimeError(f"unit {self.index} has no optimizer: call attach() first")
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        outputs, contrastive = [], 0.0
        n = len(micro_batches)
        for i, micro in enumerate(micro_batches):
            with parametrize.cached():  # each ENN weight materialised once per micro-batch (see retrieval step)
                image, text, loss = self(micro, targets[i] if targets is not None else None)
                (loss / n).backward()
            contrastive += float(loss.detach()) / n
            outputs.append((image.detach(), text.detach(), micro[2]))
        # The penalty does not depend on the data: once per step, not per micro-batch, and lazily (every
        # `penalty_every`-th step at that many times the weight, as the backprop trainer's enn.penalty_every).
        if self.steps_taken % self.penalty_every == 0:  # a due step: computed (and logged) even at weight 0
            weight = lazy_penalty_weight(self.ortho_weight, self.penalty_every, self.steps_taken)
            with torch.set_grad_enabled(weight > 0):
                penalty = orthogonality_loss(self.image) + orthogonality_loss(self.text)
            if weight and penalty.requires_grad:
                (weight * penalty).backward()
            self._last_penalty = float(penalty.detach())
        self.steps_taken += 1
        params = [p for p in self.parameters() if p.grad is not None]
        if self.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        scale = self.logit_scale if self.is_last else self.head.logit_scale
        with torch.no_grad():
            scale.clamp_(0, math.log(self.max_logit_scale))
        k = self.index
        metrics = {
            f"stage{k}_contrastive": contrastive,
            f"stage{k}_penalty": self._last_penalty,  # as last computed (at most penalty_every - 1 steps old)
            f"stage{k}_grad_norm": grad_norm,
            f"stage{k}_logit_scale": float(scale.detach().exp()),
            "lr": lr,
        }
        if monitor:
            metrics[f"stage{k}_ortho_error"] = max(orthogonality_error(self.image), orthogonality_error(self.text))
        return outputs, metrics

    def training_state(self) -> dict[str, Any]:
        """Optimizer, scheduler and head state (deep copies: safe to send while training goes on)."""
        return copy.deepcopy({
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "head": self.head.state_dict() if self.head is not None else None,
            "steps_taken": self.steps_taken,
        })

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Inverse of `training_state`."""
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state["head"] is not None:
            self.head.load_state_dict(state["head"])
        self.steps_taken = state.get("steps_taken", 0)  # absent in runs saved before the lazy penalty

    def model_state(self) -> dict[str, Tensor]:
        """This unit's share of the model state_dict (CPU copies), keyed as in the whole model."""
        return {key: t.detach().to("cpu", copy=True) for key, t in self.state_keys.items()}


def bind_state_keys(model: nn.Module, units: Sequence[LocalUnit]) -> None:
    """Record in each unit which model state_dict entries it owns; check they partition the state.

    Raises ValueError if an entry is owned by no unit or by two (a stage cut that misses or shares a
    tensor would silently leave it untrained, or train it twice).
    """
    by_id = {id(t): key for key, t in model.state_dict(keep_vars=True).items()}
    owner: dict[str, int] = {}
    for unit in units:
        unit.state_keys = {}
        for t in unit.model_tensors():
            key = by_id.get(id(t))
            if key is None:
                continue  # e.g. the text stages' non-persistent causal mask
            if owner.setdefault(key, unit.index) != unit.index:
                raise ValueError(f"{key} is owned by units {owner[key]} and {unit.index}")
            unit.state_keys[key] = t
    if len(units) == units[0].count:
        missing = sorted(set(by_id.values()) - set(owner))
        if missing:
            raise ValueError(f"no stage owns {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")


def run_units(units: Sequence[LocalUnit], micro_batches: Sequence[Micro], monitor: bool = False,
              cross_targets: bool = False) -> dict[str, float]:
    """One ENN-ℓ training step in this process: each unit in turn trains on the step's batch and passes
    its detached outputs to the next (the sequential reference the pipeline must reproduce).

    `cross_targets`: first embed the batch with all units as they stand (no gradient), and give every
    non-last unit those final embeddings as targets (`LocalUnit.forward`). They are computed with the
    weights this very step starts from, so they are not stale; the price is one more forward pass of
    both towers per step, and that every unit's weights must be in this process (no pipeline)."""
    targets = final_embeddings(units, micro_batches) if cross_targets else None
    metrics: dict[str, float] = {}
    for unit in units:
        micro_batches, unit_metrics = unit.train_step(micro_batches, monitor, targets)
        metrics.update(unit_metrics)
    return metrics


@torch.no_grad()
def final_embeddings(units: Sequence[LocalUnit], micro_batches: Sequence[Micro]) -> list[tuple[Tensor, Tensor]]:
    """The towers' L2-normalised (image, text) embeddings of each micro-batch, in training mode (batch-norm
    on batch statistics, as the step itself) with every buffer (running statistics) left as it was."""
    buffers = [b for u in units for b in u.buffers()]
    saved = [b.clone() for b in buffers]
    out = []
    for micro in micro_batches:
        for unit in units:
            unit.train()
            with unit.autocast(), parametrize.cached():
                device = next(unit.parameters()).device
                image, text, tokens = (t.to(device) for t in micro)
                micro = (unit.image(image, tokens), unit.text(text, tokens), micro[2])
        out.append((F.normalize(micro[0].float(), dim=-1), F.normalize(micro[1].float(), dim=-1)))
    for b, value in zip(buffers, saved, strict=True):
        b.copy_(value)
    return out


def make_units(
    model: nn.Module,
    stages: int,
    loss_fn: LossFn,
    head: str = "random",
    init_logit_scale: float = math.log(1 / 0.07),
    seed: int = 0,
    only: Sequence[int] | None = None,
    pool: str = "mean",
    groups: Sequence[Sequence[int]] | None = None,
    **unit_kwargs: Any,
) -> list[LocalUnit]:
    """Cut `model` (an open_clip CLIP) into `stages` stages and build one unit with a local head per
    stage, or per loss group of contiguous stages (`groups`, e.g. [[0, 1], [2, 3]]: backprop inside a
    group, detach between groups). `only` keeps a subset of the units; `pool` is the image stages' local
    readout ("mean" | "final", see `enn.local.stages`).

    Heads are seeded by (`seed`, unit index), so every process builds the same ones. `unit_kwargs` go
    to `LocalUnit` (ortho_weight, penalty_every, grad_clip, max_logit_scale, autocast). Attach optimizers afterwards.
    """
    image, text = split_clip(model, stages, pool)
    if groups is not None:
        image, text = chain_stages(image, groups), chain_stages(text, groups)
    is_vit = isinstance(getattr(image[0], "stages", image)[0], VitStage)
    if head == "block" and not is_vit:
        raise ValueError("local_head=block runs a transformer block on the stage's tokens: it needs a ViT image tower")
    if head in ("attnpool", "auglocal") and is_vit:
        raise ValueError(f"local_head={head} reads a conv feature map with an attention pool: it needs a "
                         "ModifiedResNet image tower (a ViT's token-level head is local_head=block)")
    count = len(image)
    dim = int(model.visual.output_dim)  # the shared embedding size (ViT and ModifiedResNet both record it)
    units = []
    for k in only if only is not None else range(count):
        local_head = None
        if k < count - 1:
            local_head = LocalHead(image[k].width, text[k].width, dim, head, init_logit_scale, seed * 1009 + k,
                                   *_head_parts(head, image, text, k))
        scale = model.logit_scale if k == count - 1 else None
        units.append(LocalUnit(image[k], text[k], loss_fn, local_head, scale, **unit_kwargs))
    bind_state_keys(model, units)
    return units


def _head_parts(head: str, image: Sequence[TowerStage], text: Sequence[TowerStage], k: int) -> tuple:
    """(template blocks, image readout factory) of unit k's `head` kind (see `LocalHead`)."""
    if head == "block":
        return (image[k].last_block, text[k].last_block), None
    stage = image[k]
    if head == "attnpool":
        return (None, None), functools.partial(attention_readout, stage.width, stage.spatial, stage.head_width,
                                               stage.width)
    if head == "auglocal":
        readout = functools.partial(next_layer_readout, image[k + 1].first_block, stage.spatial, stage.head_width,
                                    stage.width)
        return (None, text[k + 1].first_block), readout
    return (None, None), None
