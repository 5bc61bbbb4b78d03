"""The ENN-ℓ trainer (`training.method: local`): every stage of both towers learns from its own local loss.

Same run directory, data order, validation and checkpoint format as the bp trainer (the pieces are
shared: `retrieval.train.session`, `.data`, `.optim`, `.state`); what differs is the step. Each unit
(stage k of the image and the text tower, or with `training.local_losses: per_group` a group of
contiguous stages) has its own AdamW and schedule and trains on a contrastive loss through its local
head, on detached inputs (`enn.local`). With
`training.pipeline: true` groups of units run in separate processes, batch t in stage k while batch t−1
is in stage k+1; the parameters after any step are the same as in sequential mode (docs/enn-local.md).

Checkpoints hold one optimizer and one scheduler state per stage (lists) and the local heads under
`extra_state["local_heads"]`; a run saved in one mode resumes in the other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

import enn
from enn.local import StepReport
from retrieval.errors import UserError
from retrieval.train.data import build_train_data
from retrieval.train.distributed import init_distributed, shutdown
from retrieval.train.local_pipeline import PipelinedRunner, SequentialRunner
from retrieval.train.local_units import build_units, local_heads
from retrieval.train.optim import schedule_steps
from retrieval.train.session import (
    RunSetup,
    best_summary,
    end_of_block,
    log_train,
    prepare_run,
    save_last,
    wall_time,
)
from retrieval.train.state import Progress, Trainables, load_training_state
from retrieval.train.step import penalty_weight


@dataclass
class _Planned:
    """Where training stands once a submitted step has finished (the pipeline reports steps later)."""

    step: int
    epoch: int
    batch_in_epoch: int
    samples: int
    log: bool
    save: bool


def train_local(cfg: dict[str, Any], out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train with ENN-ℓ into RUN_DIR `out_dir` (resuming from its last.pt with `resume`); returns a summary.

    Summary keys: those of `train_bp` (step, epoch, best_step, best_rsum, val, orthogonality_error, wall_s,
    run_dir) + mode ("sequential" | "pipeline") + when pipelined, pipeline_stats (`PipelinedRunner.stats`:
    where this session's time went in every process). Raises UserError under torchrun (ENN-ℓ starts its own
    processes), for towers that cannot be cut, and when a stage process fails.
    """
    env = init_distributed(str(cfg["training"]["device"]))
    try:
        if env.distributed:
            raise UserError("training.method=local starts its own stage processes: run it without torchrun "
                            "(training.pipeline=true spreads it over processes)")
        return _train(cfg, out_dir, resume, prepare_run(cfg, out_dir, resume, env))
    finally:
        shutdown(env)


def _train(cfg: dict[str, Any], out_dir: str | Path, resume: bool, setup: RunSetup) -> dict[str, Any]:
    train_cfg = cfg["training"]
    device = setup.env.device
    data = build_train_data(cfg, setup.towers, setup.env, setup.train_records)
    total_steps = schedule_steps(train_cfg, data.steps_per_epoch)
    units = build_units(cfg, setup.towers.model, device, total_steps)
    trainables = Trainables([u.optimizer for u in units], [u.scheduler for u in units],
                            extra={"local_heads": local_heads(units)})
    progress = Progress()
    if resume:
        progress = load_training_state(setup.run.last, setup.towers, cfg, trainables)
        setup.run.truncate_metrics(progress.step)
    pipelined = bool(train_cfg["pipeline"])
    runner = (PipelinedRunner(cfg, setup.towers.model_cfg, units, total_steps, device) if pipelined
              else SequentialRunner(units, train_cfg["local_targets"] == "cross"))
    max_steps = train_cfg["max_steps"]
    stop_at = min(total_steps, int(max_steps)) if max_steps else total_steps
    log_every = max(1, int(train_cfg["log_every_steps"]))
    save_every = int(train_cfg["save_every_steps"] or 0)
    batch_size = int(train_cfg["batch_size"])
    lam = penalty_weight(cfg["enn"])
    stages = len(units)  # units, i.e. local losses: metrics are keyed stage{k} by unit

    bar = tqdm(total=stop_at, initial=progress.step, desc=f"train local/{runner.mode}", unit="step")
    window: dict[str, float] = {}
    window_steps = 0
    window_start = time.perf_counter()
    val: dict[str, Any] = {}
    planned: dict[int, _Planned] = {}

    def finished(reports: list[StepReport]) -> None:
        """Book the steps the runner reports done: progress, metrics log, periodic last.pt."""
        nonlocal window, window_steps, window_start
        for report in reports:
            plan = planned.pop(report.step)
            progress.step, progress.epoch = plan.step, plan.epoch
            progress.batch_in_epoch, progress.samples = plan.batch_in_epoch, plan.samples
            m = report.metrics
            penalties = sum(m[f"stage{k}_penalty"] for k in range(stages))
            final = m[f"stage{stages - 1}_contrastive"]
            if not math.isfinite(final):
                raise FloatingPointError(f"training loss is {final} at step {plan.step}")
            values = {"loss": final + lam * penalties, "contrastive_loss": final, "ortho_penalty": penalties,
                      **{f"stage{k}_loss": m[f"stage{k}_contrastive"] for k in range(stages)}}
            for key, value in values.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1
            bar.update()
            if plan.log:
                rate = window_steps * batch_size / (time.perf_counter() - window_start)
                record = log_train(setup, progress, {
                    **{key: value / window_steps for key, value in window.items()},
                    "lr": m["lr"],
                    "temperature": 1.0 / m[f"stage{stages - 1}_logit_scale"],
                    "grad_norm": m[f"stage{stages - 1}_grad_norm"],
                    "samples_per_s": round(rate, 1),
                    "orthogonality_error": max(m[f"stage{k}_ortho_error"] for k in range(stages)),
                })
                bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{rate:.0f}")
                window, window_steps, window_start = {}, 0, time.perf_counter()
            if plan.save:
                save_last(setup, cfg, trainables, progress)

    with runner:
        window_start = time.perf_counter()  # stage processes are up: start timing throughput now
        queued = Progress(**progress.state_dict())  # where the last *submitted* step leaves us
        while queued.step < stop_at:
            for micro_batches in data.batches(queued.epoch, queued.batch_in_epoch):
                queued.step += 1
                queued.batch_in_epoch += 1
                queued.samples += batch_size
                block_end = queued.step >= stop_at or queued.batch_in_epoch >= data.steps_per_epoch
                plan = _Planned(queued.step, queued.epoch, queued.batch_in_epoch, queued.samples,
                                log=queued.step % log_every == 0 or queued.step == stop_at,
                                save=bool(save_every) and queued.step % save_every == 0)
                planned[queued.step] = plan
                finished(runner.submit(queued.step, micro_batches, snapshot=plan.save or block_end,
                                       monitor=plan.log))
                if block_end:
                    break
            if planned:  # (nothing is in flight when a resumed run starts at the end of an epoch)
                finished(runner.wait(queued.step))  # validation needs this step's weights everywhere
            if queued.batch_in_epoch >= data.steps_per_epoch:  # the epoch ran to its end
                queued.epoch += 1
                queued.batch_in_epoch = 0
                progress.epoch, progress.batch_in_epoch = queued.epoch, 0
            val = end_of_block(setup, cfg, trainables, progress, final=progress.step >= stop_at) or val
            window_start = time.perf_counter()  # validation time is not training throughput
        finished(runner.finish())
    bar.close()
    stats = {"pipeline_stats": runner.stats()} if isinstance(runner, PipelinedRunner) else {}
    return {
        "step": progress.step,
        "epoch": progress.epoch,
        **best_summary(progress),
        "val": val,
        "orthogonality_error": enn.orthogonality_error(setup.towers.model),
        "wall_s": wall_time(setup, progress),
        "run_dir": str(setup.run.root),
        "mode": runner.mode,
        **stats,
    }
