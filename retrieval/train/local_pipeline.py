"""The two ways to run ENN-ℓ units, behind one interface: in this process, or pipelined across processes.

Both take one optimizer step per `submit(step, micro_batches, snapshot, monitor)` and hand back the
`StepReport`s of the steps that have finished (sequential: at once; pipelined: as the last stage gets
there). In pipelined mode the trainer's own copy of the units (model, optimizers, heads) is refreshed
from every snapshot report, so checkpoints and validation see exactly the state after that step, and
`stats()` gives the stage processes' time accounting for the run's summary.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from enn.local import LocalPipeline, LocalUnit, PipelineError, StepReport, group_units, run_units
from retrieval.device import usable_cores
from retrieval.errors import UserError
from retrieval.train.local_units import (
    load_unit_state,
    pipeline_procs,
    stage_process_units,
    unit_count,
    unit_state,
)

log = logging.getLogger(__name__)

Batch = Sequence[tuple[torch.Tensor, torch.Tensor]]  # the trainer's micro-batches of (images, tokens)


def _micro(micro_batches: Batch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stage 0's inputs: (pixels, token ids) and the token ids again, which every stage needs for pooling."""
    return [(images, tokens, tokens) for images, tokens in micro_batches]


class SequentialRunner:
    """ENN-ℓ in this process: each step runs every unit in turn (the correctness reference)."""

    mode = "sequential"

    def __init__(self, units: Sequence[LocalUnit], cross_targets: bool = False) -> None:
        self.units, self.cross_targets = list(units), cross_targets

    def __enter__(self) -> SequentialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, step: int, micro_batches: Batch, snapshot: bool = False, monitor: bool = False) -> list[StepReport]:
        """Train step `step` now; the model is live, so no state needs to travel."""
        return [StepReport(step, run_units(self.units, _micro(micro_batches), monitor, self.cross_targets), None)]

    def wait(self, step: int) -> list[StepReport]:
        """Nothing is ever in flight."""
        return []

    def finish(self) -> list[StepReport]:
        return []


def pipeline_layout(train: Mapping[str, Any], device: torch.device) -> tuple[list[list[int]], list[str], int]:
    """(unit groups, device per process, threads per process) from `training.pipeline_*` and the device
    (with `training.local_losses: per_group` every process holds exactly one unit).

    CPU: every process on "cpu" with cores ÷ processes threads. CUDA: processes round-robin over the GPUs
    (or all on the one named by `training.device: cuda:N`).
    """
    procs = pipeline_procs(train)
    units = unit_count(train)  # per_group losses: one unit per process
    threads = train["pipeline_threads"]
    if threads is None:
        threads = max(1, usable_cores() // procs)
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"training.pipeline_threads must be a positive integer or null, got {threads!r}")
    if device.type == "cuda" and device.index is None:
        devices = [f"cuda:{r % torch.cuda.device_count()}" for r in range(procs)]
    else:
        devices = [str(device)] * procs
    return group_units(units, procs), devices, threads


class PipelinedRunner:
    """ENN-ℓ with groups of units in separate processes (`enn.local.LocalPipeline`).

    `units` is the trainer's own full set (on the trainer's model): it seeds the processes (weights and,
    when resuming, optimizer states) and receives their snapshots.
    """

    mode = "pipeline"

    def __init__(self, cfg: dict[str, Any], model_cfg: dict[str, Any], units: Sequence[LocalUnit],
                 total_steps: int, device: torch.device) -> None:
        train = cfg["training"]
        if train["local_targets"] == "cross":
            raise UserError("training.local_targets=cross needs the final embeddings of each batch before its "
                            "first stage trains, i.e. every stage's weights in one process: use "
                            "training.pipeline=false")
        timeout = train["pipeline_timeout"]
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise UserError(f"training.pipeline_timeout must be a positive number of seconds, got {timeout!r}")
        groups, devices, threads = pipeline_layout(train, device)
        self.units = list(units)
        init = {u.index: unit_state(u) for u in self.units}
        factory = functools.partial(stage_process_units, cfg, model_cfg, init, total_steps)
        self.pipe = LocalPipeline(factory, groups, devices, threads, float(timeout))
        self._cpu_start = 0.0  # process_time() once the stage processes are up
        log.info("ENN-ℓ pipeline: %d processes (units %s) on %s, %d thread(s) each", len(groups), groups,
                 devices, threads)

    def __enter__(self) -> PipelinedRunner:
        self._guard(self.pipe.start)
        self._cpu_start = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipe.close()

    def submit(self, step: int, micro_batches: Batch, snapshot: bool = False, monitor: bool = False) -> list[StepReport]:
        """Queue step `step` (blocks while the pipeline is full); returns the steps finished meanwhile."""
        return self._apply(self._guard(self.pipe.submit, step, _micro(micro_batches), snapshot, monitor))

    def wait(self, step: int) -> list[StepReport]:
        """Block until `step` is done everywhere (its snapshot, if asked for, is applied on return)."""
        return self._apply(self._guard(self.pipe.wait, step))

    def finish(self) -> list[StepReport]:
        """Drain and stop the processes."""
        return self._apply(self._guard(self.pipe.finish))

    def stats(self) -> dict[str, Any]:
        """Per stage process (by rank) its steps, CPU seconds and wall seconds working / blocked receiving /
        blocked sending (`enn.local.pipeline.StageStats`); this process's (the feeder's: data loading,
        validation, checkpoints) CPU seconds since the stages started and seconds blocked feeding the first
        one. Totals once `finish` has returned."""
        return {"stages": [asdict(s) for s in self.pipe.stage_stats],
                "feeder_cpu_s": time.process_time() - self._cpu_start,
                "feed_blocked_s": self.pipe.feed_blocked_s}

    def _apply(self, reports: list[StepReport]) -> list[StepReport]:
        for report in reports:
            for index, state in (report.state or {}).items():
                load_unit_state(self.units[index], state)
        return reports

    @staticmethod
    def _guard(fn: Any, *args: Any) -> Any:
        """A failed stage process becomes one clear error line (its traceback goes to the log)."""
        try:
            return fn(*args)
        except PipelineError as err:
            head, _, detail = str(err).partition("\n")
            if detail:
                log.error("%s\n%s", head, detail)
                last = detail.strip().splitlines()[-1]
                head = f"{head.rstrip(':')}: {last}"
            raise UserError(head) from None
