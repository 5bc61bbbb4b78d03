"""Training progress, and saving/restoring it through the one checkpoint format (exact resume)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from retrieval.checkpoint import read_checkpoint, save_checkpoint, set_rng_state
from retrieval.errors import UserError
from retrieval.model import Towers

log = logging.getLogger(__name__)

# Config sections that must match between a checkpoint and the run resuming it (training keys may change,
# e.g. a larger max_steps to continue a run that was stopped early; so may the data loader's workers).
RESUME_MUST_MATCH = ("model", "enn", "data")
RESUME_MAY_CHANGE = {"data": ("workers",)}


@dataclass
class Progress:
    """Where training stands: `step` optimizer steps done in all, `batch_in_epoch` of them in `epoch`."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0  # training samples seen (global)
    wall_s: float = 0.0  # training wall time over all sessions (resumes add up)
    best_rsum: float = -math.inf
    best_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for the checkpoint."""
        return asdict(self)


@dataclass
class Trainables:
    """What a checkpoint saves and restores besides the model: optimizer(s), scheduler(s), extra modules.

    The bp trainer has one optimizer and one scheduler; ENN-ℓ may keep one per stage (lists are saved in
    order) and `extra` modules outside the towers (e.g. learned local heads), saved by their state_dict
    under `extra_state[name]`.
    """

    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)


def save_training_state(
    path: str | Path,
    towers: Towers,
    config: dict[str, Any],
    trainables: Trainables,
    progress: Progress,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Checkpoint model (ENN form), optimizer(s), scheduler(s), progress, RNG states and the last metrics.

    Keys written: config, model, optimizer, scheduler (a state_dict, or a list when there are several),
    step, epoch, batch_in_epoch, progress, metrics, extra_state, rng. Returns the model fingerprint.
    """
    optimizers = [o.state_dict() for o in trainables.optimizers]
    schedulers = [s.state_dict() for s in trainables.schedulers]
    return save_checkpoint(
        path,
        towers,
        config,
        optimizer=optimizers[0] if len(optimizers) == 1 else optimizers,
        scheduler=schedulers[0] if len(schedulers) == 1 else schedulers,
        step=progress.step,
        epoch=progress.epoch,
        batch_in_epoch=progress.batch_in_epoch,
        progress=progress.state_dict(),
        metrics=metrics or {},
        extra_state={name: module.state_dict() for name, module in trainables.extra.items()},
    )


def check_resumable(payload: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume into a different model/data than the checkpoint was trained with."""
    saved = payload.get("config", {})
    for section in RESUME_MUST_MATCH:
        free = RESUME_MAY_CHANGE.get(section, ())
        before = {k: v for k, v in saved.get(section, {}).items() if k not in free}
        after = {k: v for k, v in config.get(section, {}).items() if k not in free}
        if before != after:
            raise UserError(
                f"--resume: the config's `{section}` section differs from the one {path} was trained with "
                "(resume with the run's own config.yaml, changing only training keys)"
            )
    loss = saved.get("training", {}).get("loss", "clip")  # the loss decides whether the model has a logit_bias
    if loss != config["training"]["loss"]:
        raise UserError(f"--resume: {path} was trained with training.loss={loss}, the config says "
                        f"{config['training']['loss']} (a run keeps its loss)")
    if "progress" not in payload or "optimizer" not in payload:
        raise UserError(f"--resume: {path} holds no training state (not written by `retrieval train`)")


def read_resume_point(path: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Load a run's last.pt for resuming and check it fits `config` (before any model is built)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint to resume from: {path} does not exist")
    payload = read_checkpoint(path)
    check_resumable(payload, config, path)
    payload["path"] = str(path)
    return payload


def restore_training_state(payload: dict[str, Any], towers: Towers, trainables: Trainables) -> Progress:
    """Put model, optimizer(s), scheduler(s), extra modules and RNG states back; returns the saved progress.

    `payload` comes from `read_resume_point`. Call it after building optimizers/schedulers as for a fresh
    run (the same parameter groups), and before wrapping the model in DDP.
    """
    where = payload.get("path", "the checkpoint")
    towers.model.load_state_dict(payload["model"], strict=True)
    optimizers = payload["optimizer"] if isinstance(payload["optimizer"], list) else [payload["optimizer"]]
    schedulers = payload["scheduler"] if isinstance(payload["scheduler"], list) else [payload["scheduler"]]
    if len(optimizers) != len(trainables.optimizers) or len(schedulers) != len(trainables.schedulers):
        raise UserError(f"--resume: {where} was saved with a different number of optimizers (another method?)")
    for optimizer, state in zip(trainables.optimizers, optimizers, strict=True):
        optimizer.load_state_dict(state)
    for scheduler, state in zip(trainables.schedulers, schedulers, strict=True):
        scheduler.load_state_dict(state)
    extra_state = payload.get("extra_state", {})
    for name, module in trainables.extra.items():
        if name not in extra_state:
            raise UserError(f"--resume: {where} has no saved state for {name!r}")
        module.load_state_dict(extra_state[name])
    set_rng_state(payload["rng"])
    progress = Progress(**payload["progress"])
    if not payload["config"]["data"].get("val_split") and math.isfinite(progress.best_rsum):
        # Checkpoints written before best_rsum meant "validation RSUM" stored the step count there when no
        # validation ran (e.g. 560 at step 560): a run without validation has no RSUM to report.
        log.info("%s: dropping best_rsum %g, which no validation measured", where, progress.best_rsum)
        progress.best_rsum = -math.inf
    log.info("resuming from %s at step %d (epoch %d, batch %d)", where, progress.step, progress.epoch,
             progress.batch_in_epoch)
    return progress


def load_training_state(path: str | Path, towers: Towers, config: dict[str, Any], trainables: Trainables) -> Progress:
    """`read_resume_point` + `restore_training_state` in one call (when `prepare_run`'s payload is not at hand)."""
    return restore_training_state(read_resume_point(path, config), towers, trainables)
