"""The backprop trainer (`training.method: bp`): contrastive training of both towers end to end.

Read top to bottom: set up (session.prepare_run), data, optimizer + schedule, optional resume, DDP wrap,
then epochs of optimizer steps; validation and checkpoints at each epoch end (and when stopping early).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import enn
from retrieval.train.data import build_train_data
from retrieval.train.distributed import DistEnv, init_distributed, shutdown
from retrieval.train.optim import build_optimizer, build_scheduler, schedule_steps
from retrieval.train.session import best_summary, end_of_block, log_train, prepare_run, save_last, wall_time
from retrieval.train.state import Progress, Trainables, restore_training_state
from retrieval.train.step import StepResult, build_loss, train_step

log = logging.getLogger(__name__)


class LossWindow:
    """Mean losses and throughput over the steps since the last log record."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums = {"loss": 0.0, "contrastive_loss": 0.0}
        self.penalties: list[float] = []  # the steps that computed it (a lazy penalty skips some)
        self.steps = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        """Start timing from now (after set-up or validation)."""
        self.start = time.perf_counter()

    def add(self, result: StepResult) -> None:
        """Account one optimizer step."""
        self.sums["loss"] += result.loss
        self.sums["contrastive_loss"] += result.contrastive
        if result.penalty is not None:
            self.penalties.append(result.penalty)
        self.steps += 1

    def flush(self, batch_size: int) -> dict[str, float]:
        """Means since the last flush and samples/s, then start a new window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {key: value / self.steps for key, value in self.sums.items()}
        if self.penalties:
            out["ortho_penalty"] = sum(self.penalties) / len(self.penalties)
        out["samples_per_s"] = round(self.steps * batch_size / elapsed, 1)
        self._reset()
        return out


def train_bp(cfg: dict[str, Any], out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train with backprop into RUN_DIR `out_dir` (resuming from its last.pt with `resume`); returns a summary.

    Summary keys: step, epoch, best_step, best_rsum, val (last validation metrics), orthogonality_error,
    wall_s, run_dir. Under torchrun every rank calls this; rank 0 writes the run directory.
    """
    env = init_distributed(str(cfg["training"]["device"]))
    try:
        return _train(cfg, out_dir, resume, env)
    finally:
        shutdown(env)


def _train(cfg: dict[str, Any], out_dir: str | Path, resume: bool, env: DistEnv) -> dict[str, Any]:
    setup = prepare_run(cfg, out_dir, resume, env)
    train_cfg = cfg["training"]
    model = setup.towers.model
    data = build_train_data(cfg, setup.towers, env, setup.train_records)
    total_steps = schedule_steps(train_cfg, data.steps_per_epoch)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, total_steps)
    trainables = Trainables([optimizer], [scheduler])
    progress = Progress()
    if setup.resume_state is not None:
        progress = restore_training_state(setup.resume_state, setup.towers, trainables)
        setup.resume_state = None  # free the checkpoint's tensors
        if env.is_main:
            setup.run.truncate_metrics(progress.step)  # steps after last.pt are redone and logged again
    forward = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None) \
        if env.distributed else model
    loss_fn = build_loss(env, str(train_cfg["loss"]))
    max_steps = train_cfg["max_steps"]
    stop_at = min(total_steps, int(max_steps)) if max_steps else total_steps
    log_every = max(1, int(train_cfg["log_every_steps"]))
    save_every = int(train_cfg["save_every_steps"] or 0)
    batch_size = int(train_cfg["batch_size"])

    bar = tqdm(total=stop_at, initial=progress.step, desc="train", unit="step", disable=not env.is_main)
    window = LossWindow()
    val: dict[str, Any] = {}
    while progress.step < stop_at:
        for micro_batches in data.batches(progress.epoch, progress.batch_in_epoch):
            result = train_step(forward, model, micro_batches, loss_fn, optimizer, scheduler, cfg, env,
                                progress.step)
            if not math.isfinite(result.loss):
                raise FloatingPointError(f"training loss is {result.loss} at step {progress.step + 1}")
            progress.step += 1
            progress.batch_in_epoch += 1
            progress.samples += batch_size
            window.add(result)
            bar.update()
            if progress.step % log_every == 0 or progress.step == stop_at:
                record = log_train(setup, progress, {
                    **window.flush(batch_size),
                    "lr": result.lr,
                    "temperature": math.exp(-float(model.logit_scale.detach())),
                    **({"logit_bias": float(model.logit_bias.detach())}
                       if getattr(model, "logit_bias", None) is not None else {}),  # training.loss=siglip
                    "grad_norm": result.grad_norm,
                })
                bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
            if save_every and progress.step % save_every == 0:
                save_last(setup, cfg, trainables, progress)
            if progress.step >= stop_at:
                break
        if progress.batch_in_epoch >= data.steps_per_epoch:  # the epoch ran to its end
            progress.epoch += 1
            progress.batch_in_epoch = 0
        val = end_of_block(setup, cfg, trainables, progress, final=progress.step >= stop_at) or val
        window.restart_clock()  # validation time is not training throughput
    bar.close()
    return {
        "step": progress.step,
        "epoch": progress.epoch,
        **best_summary(progress),
        "val": val,
        "orthogonality_error": enn.orthogonality_error(model),
        "wall_s": wall_time(setup, progress),
        "run_dir": str(setup.run.root),
    }

