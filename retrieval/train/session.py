"""The parts of a training run every method shares (bp and ENN-ℓ): set-up, validation, saving, logging.

A trainer calls `prepare_run` once, then per log step `log_train`, per `save_every_steps` `save_last`, and
per epoch (and when it stops) `end_of_block`, which validates, keeps best.pt, writes last.pt and redraws
curves.png. Only rank 0 writes; every rank may call these (the others return at once).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parametrize

import enn
from retrieval.checkpoint import LoadedModel
from retrieval.config import save_config
from retrieval.data import EvalSet, ImageRecord
from retrieval.data.records import split_problem
from retrieval.device import usable_cores
from retrieval.errors import UserError
from retrieval.evaluate import evaluate, load_eval_set
from retrieval.model import Towers, build_towers
from retrieval.train.data import load_train_records
from retrieval.train.distributed import DistEnv
from retrieval.train.run_dir import RunDir
from retrieval.train.state import Progress, Trainables, read_resume_point, save_training_state
from retrieval.train.step import set_temperature

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What `prepare_run` hands a trainer: the run folder, process placement, towers (on device) and data."""

    run: RunDir
    env: DistEnv
    towers: Towers
    train_records: list[ImageRecord]
    val_set: EvalSet | None
    started: float  # time.perf_counter() at set-up, for wall-time accounting
    resume_state: dict[str, Any] | None = None  # the checked last.pt payload when resuming (restore_training_state)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model initialisation; data order has its own seeded generators)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_cpu_threads(cfg: Mapping[str, Any], env: DistEnv) -> int:
    """Torch intra-op threads for CPU training: `training.threads`, else OMP_NUM_THREADS, else the cores this
    process can use minus its data workers (at least 1).

    Oversubscribing hurts badly here: OpenMP threads spin at every op's barrier, so one preempted thread
    (by a data worker or another process) stalls all of them — measured 1.7 s/step with 1 thread against
    16 s/step with 2 on a busy 2-core machine. Returns the thread count in use.
    """
    threads = cfg["training"]["threads"]
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"config key training.threads must be a positive integer or null, got {threads!r}")
    if env.device.type == "cpu":
        if threads is None and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, usable_cores() // env.world_size - int(cfg["data"]["workers"]))
        if threads is not None:
            torch.set_num_threads(int(threads))
    log.info("torch threads: %d", torch.get_num_threads())
    return torch.get_num_threads()


def prepare_run(cfg: dict[str, Any], out_dir: str | Path, resume: bool, env: DistEnv) -> RunSetup:
    """Check inputs (resume point, data files, splits) before any work, seed, build towers, write config.yaml.

    Fresh runs start the temperature at `training.init_temperature` (unless `model.pretrained` brings
    its own). Raises UserError for: --resume without RUN_DIR/checkpoints/last.pt or with a different
    model/enn/data config, a fresh run into a used RUN_DIR, a missing data file or image folder, an empty
    split. When resuming, `resume_state` holds the checkpoint for `restore_training_state`.
    """
    run = RunDir(out_dir)
    resume_state = read_resume_point(run.last, cfg) if resume else None
    if not resume and run.last.is_file():
        raise UserError(f"{run.root} already holds a run (checkpoints/last.pt); pass --resume or another --out")
    val_split = cfg["data"]["val_split"]
    problem = split_problem(cfg["data"]) if val_split else None
    if problem:
        raise UserError(f"{problem}, or set data.val_split: null to train without validation")
    train_records = load_train_records(cfg)
    val_set = load_eval_set(cfg["data"], str(val_split)) if val_split else None
    set_cpu_threads(cfg, env)
    seed_everything(int(cfg["training"]["seed"]))
    towers = build_towers(cfg)
    if not cfg["model"]["pretrained"]:
        set_temperature(towers.model, float(cfg["training"]["init_temperature"]))
    towers.model.to(env.device)
    if cfg["training"]["channels_last"]:  # oneDNN runs conv towers faster in NHWC on CPU (docs/results.md)
        towers.model.visual.to(memory_format=torch.channels_last)
    if env.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    return RunSetup(run, env, towers, train_records, val_set, time.perf_counter(), resume_state)


def validate(towers: Towers, cfg: Mapping[str, Any], eval_set: EvalSet, device: torch.device) -> dict[str, float]:
    """Recall@K/RSUM of the current model on `eval_set` (retrieval.evaluate), leaving training state untouched.

    The model is put in eval mode and back; torch's RNG is forked so validation does not shift training
    randomness.
    """
    model = towers.model
    was_training = model.training
    loaded = LoadedModel(
        model=model.eval(),
        preprocess=towers.preprocess_val,
        tokenizer=towers.tokenizer,
        config=dict(cfg),
        towers=towers,
        fingerprint="",
        device=device,
        precision=str(cfg["training"]["precision"]),
    )
    try:
        # cached(): the ENN weights are materialised once for the whole validation, not once per read.
        with torch.random.fork_rng(devices=[]), parametrize.cached():
            return evaluate(loaded, eval_set, batch_size=int(cfg["training"]["eval_batch_size"]),
                            workers=int(cfg["data"]["workers"]))
    finally:
        model.train(was_training)


def wall_time(setup: RunSetup, progress: Progress) -> float:
    """Training wall time so far, over all sessions of the run (what a resumed run reports)."""
    return progress.wall_s + time.perf_counter() - setup.started


def save_last(setup: RunSetup, cfg: dict[str, Any], trainables: Trainables, progress: Progress,
              metrics: dict[str, Any] | None = None) -> None:
    """Write checkpoints/last.pt (rank 0): the resume point, with wall time accounted up to now."""
    if not setup.env.is_main:
        return
    snapshot = Progress(**{**progress.state_dict(), "wall_s": wall_time(setup, progress)})
    save_training_state(setup.run.last, setup.towers, cfg, trainables, snapshot, metrics)


def log_train(setup: RunSetup, progress: Progress, values: Mapping[str, Any]) -> dict[str, Any]:
    """Append a `"kind": "train"` record (rank 0) with step, epoch, wall time, orthogonality error + `values`.

    A trainer whose live weights are elsewhere (ENN-ℓ pipelined: in the stage processes) passes its own
    `orthogonality_error` in `values`; otherwise it is measured on `setup.towers.model`.
    """
    record = {
        "kind": "train",
        "step": progress.step,
        "epoch": progress.epoch,
        **values,
        "orthogonality_error": values["orthogonality_error"] if "orthogonality_error" in values
        else enn.orthogonality_error(setup.towers.model),
        "wall_s": round(wall_time(setup, progress), 3),
    }
    if setup.env.is_main:
        setup.run.log_metrics(record)
    return record


def end_of_block(
    setup: RunSetup, cfg: dict[str, Any], trainables: Trainables, progress: Progress, final: bool = True
) -> dict[str, Any]:
    """Validate (rank 0), update best.pt on a better RSUM, write last.pt, log a `"kind": "val"` record, redraw curves.

    Without a validation split (`data.val_split: null`) best.pt is the last checkpoint and no RSUM is
    recorded. Between `training.val_every_epochs` epochs (and unless `final`) only last.pt is written.
    Returns the validation metrics ({} on other ranks and when skipped).
    """
    if not setup.env.is_main:
        return {}
    if not final and progress.epoch % int(cfg["training"]["val_every_epochs"]):
        save_last(setup, cfg, trainables, progress)
        return {}
    metrics: dict[str, Any] = {}
    if setup.val_set is not None:
        metrics = validate(setup.towers, cfg, setup.val_set, setup.env.device)
    # Without validation no recall was measured: best.pt is simply the last checkpoint (best_rsum stays unset).
    improved = not metrics or metrics["rsum"] > progress.best_rsum
    if improved:
        progress.best_step = progress.step
        if metrics:
            progress.best_rsum = metrics["rsum"]
    record = {"kind": "val", "step": progress.step, "epoch": progress.epoch, **metrics,
              "orthogonality_error": enn.orthogonality_error(setup.towers.model),
              "wall_s": round(wall_time(setup, progress), 3)}
    setup.run.log_metrics(record)
    save_last(setup, cfg, trainables, progress, metrics)
    if improved:
        snapshot = Progress(**{**progress.state_dict(), "wall_s": wall_time(setup, progress)})
        save_training_state(setup.run.best, setup.towers, cfg, trainables, snapshot, metrics)
    setup.run.plot_curves()
    if metrics:
        log.info("step %d: val RSUM %.1f (R@1 i2t %.1f, t2i %.1f)%s", progress.step, metrics["rsum"],
                 metrics["i2t_r1"], metrics["t2i_r1"], " — best so far" if improved else "")
    return metrics


def best_summary(progress: Progress) -> dict[str, Any]:
    """How best.pt was chosen, for run summaries: its step, its validation RSUM (None when no validation
    ran) and `best` = "validation RSUM" or "last checkpoint"."""
    measured = math.isfinite(progress.best_rsum)
    return {"best_step": progress.best_step, "best_rsum": progress.best_rsum if measured else None,
            "best": "validation RSUM" if measured else "last checkpoint"}
