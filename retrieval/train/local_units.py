"""ENN-ℓ units from a run config: stages, local heads, one AdamW + schedule per stage (what both modes train).

`build_units` is used in the trainer's own process (sequential mode, and the parent's copy that gathers
checkpoints in pipelined mode); `stage_process_units` is the factory each pipeline process runs.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from enn.local import LocalUnit, group_units, make_units
from retrieval.device import autocast
from retrieval.errors import UserError
from retrieval.model import build_towers
from retrieval.train.distributed import DistEnv
from retrieval.train.optim import build_optimizer, build_scheduler
from retrieval.train.step import build_loss, penalty_weight

log = logging.getLogger(__name__)


def pipeline_procs(train: Mapping[str, Any]) -> int:
    """`training.pipeline_procs`, checked (null: one process per stage)."""
    stages, procs = int(train["stages"]), train["pipeline_procs"]
    procs = stages if procs is None else procs
    if not isinstance(procs, int) or not 1 <= procs <= stages:
        raise UserError(f"training.pipeline_procs must be between 1 and training.stages={stages}, got {procs!r}")
    return procs


def loss_groups(train: Mapping[str, Any]) -> list[list[int]] | None:
    """Stage groups that share one local loss (`training.local_losses: per_group`: the pipeline's process
    groups, also in sequential mode, so both modes train the same units), or None: one loss per stage."""
    if train["local_losses"] != "per_group":
        return None
    return group_units(int(train["stages"]), pipeline_procs(train))


def unit_count(train: Mapping[str, Any]) -> int:
    """How many units (local losses, each with its own optimizer) a config trains."""
    groups = loss_groups(train)
    return int(train["stages"]) if groups is None else len(groups)


def build_units(
    cfg: Mapping[str, Any],
    model: nn.Module,
    device: torch.device,
    total_steps: int,
    only: Sequence[int] | None = None,
) -> list[LocalUnit]:
    """Cut `model` into `training.stages` stages and one unit per stage or loss group (`loss_groups`; or
    the subset `only`) on `device`, each with its own AdamW (the bp trainer's parameter groups) and
    cosine/warm-up schedule over `total_steps`.

    Raises UserError when the towers cannot be cut (HF/timm towers, fewer blocks than stages).
    """
    train = cfg["training"]
    env = DistEnv.single(device)
    # Move first: units record the model's tensors (buffers included), and `.to` replaces buffer objects.
    model.to(device)
    try:
        units = make_units(
            model,
            int(train["stages"]),
            build_loss(env),
            head=str(train["local_head"]),
            init_logit_scale=math.log(1.0 / float(train["init_temperature"])),
            seed=int(train["seed"]),
            only=only,
            pool=str(train["local_pool"]),
            groups=loss_groups(train),
            ortho_weight=penalty_weight(cfg["enn"]),
            penalty_every=int(cfg["enn"]["penalty_every"]),
            grad_clip=float(train["grad_clip"]) if train["grad_clip"] else None,
            max_logit_scale=float(train["max_logit_scale"]),
            autocast=functools.partial(autocast, device, str(train["precision"])),
        )
    except ValueError as err:
        raise UserError(f"training.method=local: {err} (training.stages={train['stages']})") from None
    for unit in units:
        unit.to(device)
        optimizer = build_optimizer(unit, train)
        unit.attach(optimizer, build_scheduler(optimizer, train, total_steps))
    return units


def local_heads(units: Sequence[LocalUnit]) -> nn.ModuleList:
    """The local heads (all units but the last) as one module, saved in checkpoints as `extra_state`."""
    return nn.ModuleList(u.head for u in units if u.head is not None)


def load_unit_state(unit: LocalUnit, state: Mapping[str, Any]) -> None:
    """Set a unit's model tensors and training state from a `StepReport.state` entry (or an init payload)."""
    with torch.no_grad():
        for key, value in state["model"].items():
            unit.state_keys[key].copy_(value)
    unit.load_training_state(state["training"])


def unit_state(unit: LocalUnit) -> dict[str, Any]:
    """Inverse of `load_unit_state`: what a stage process is started from."""
    return {"model": unit.model_state(), "training": unit.training_state()}


def _release_unowned(model: nn.Module, units: Sequence[LocalUnit]) -> None:
    """Free the tensors of stages other processes own: a stage process holds only its share of the model."""
    owned = {id(t) for u in units for t in u.state_keys.values()}
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if id(t) not in owned:
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)


def stage_process_units(
    cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    init: dict[int, dict[str, Any]],
    total_steps: int,
    ids: Sequence[int],
    device: torch.device,
) -> list[LocalUnit]:
    """Factory run inside each pipeline process: rebuild the architecture, keep units `ids`, load `init`."""
    model = build_towers(cfg, model_cfg=model_cfg).model.to(device)
    units = build_units(cfg, model, device, total_steps, only=ids)
    for unit in units:
        load_unit_state(unit, init[unit.index])
    _release_unowned(model, units)
    log.info("stage process %d: units %s on %s, %d threads", os.getpid(), list(ids), device,
             torch.get_num_threads())
    return units
