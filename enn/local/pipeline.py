"""ENN-ℓ pipelined across processes: each process owns a contiguous group of units and its own cores/device.

Process r receives batch t's detached activations from process r−1, runs its units' local steps and
passes its outputs to r+1, so while r works on batch t, r+1 works on batch t−1. Because no gradient
crosses a unit boundary, unit k's update for batch t depends only on (its parameters after t−1, its
inputs for t), exactly as in the sequential loop (`run_units`): the pipeline introduces *no* staleness;
parameters after the same batches are identical (bitwise, given the same per-process thread count).

Transport: `torch.multiprocessing` queues (spawn context; CPU tensors travel through shared memory).
Bounded queues give back-pressure. Failure handling: a unit that raises reports its traceback and exits
non-zero; the parent watches every child's exit code while it waits (polling, never blocking forever),
and on any death or a `timeout` without progress it stops the others and raises `PipelineError`.
Children poll their inbox too and leave when the parent dies or the run is aborted, so nothing hangs.

Accounting (what explains a pipeline's speed): every stage process keeps cumulative `StageStats` (wall
time working, blocked receiving, blocked sending; CPU time; steps) from the moment its first step arrives,
and attaches a copy to every step report and to its final "done" report; the parent counts its own time
blocked feeding the first process (`feed_blocked_s`). Cumulative totals rather than per-step deltas: the
counters over any run of steps (a benchmark's timed window after warm-up) are the difference of two
reports' totals, with no request/reply protocol and no effect on the step's path beyond a few
`perf_counter` calls and one `process_time` call per step.
"""

from __future__ import annotations

import logging
import os
import queue
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field, replace
from typing import Any

import torch
import torch.multiprocessing as mp

from enn.local.unit import LocalUnit, Micro

log = logging.getLogger(__name__)

# factory(unit indices, device) -> those units, built in the child with optimizers attached and the
# initial state loaded. Must be picklable (a module-level function or a functools.partial of one).
UnitFactory = Callable[[Sequence[int], torch.device], list[LocalUnit]]

_POLL_S = 0.1
_QUEUE_DEPTH = 2  # batches in flight between two processes


class PipelineError(RuntimeError):
    """A stage process died, raised, or stopped making progress; the pipeline has been shut down."""


@dataclass
class StageStats:
    """One stage process's cumulative accounting (seconds), counted from the arrival of its first step.

    work_s: its units' train steps and snapshots; recv_s: blocked waiting for the next step (which, inside
    a trainer, includes the parent's validation and checkpoints); send_s: blocked handing its outputs to
    the next process (back-pressure: that one is slower); cpu_s: the process's CPU time, all its threads
    (the queue's pickling thread too). `later - earlier` gives the counters over the steps in between.
    """

    steps: int = 0
    work_s: float = 0.0
    recv_s: float = 0.0
    send_s: float = 0.0
    cpu_s: float = 0.0

    def __sub__(self, other: StageStats) -> StageStats:
        return StageStats(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class StepReport:
    """One finished step: merged metrics of all units, and their state when a snapshot was asked for.

    `state` maps unit index → {"model": that unit's share of the model state_dict, "training": its
    optimizer/scheduler/head state}. `stage_stats`: each stage process's counters (by rank) just after
    it finished this step (empty from the sequential runner).
    """

    step: int
    metrics: dict[str, float]
    state: dict[int, dict[str, Any]] | None
    stage_stats: list[StageStats] = field(default_factory=list)


def group_units(units: int, procs: int) -> list[list[int]]:
    """Contiguous groups of unit indices, one per process, as even as possible (later groups larger)."""
    if not 1 <= procs <= units:
        raise ValueError(f"cannot spread {units} stages over {procs} processes (need 1 ≤ processes ≤ stages)")
    base, extra = divmod(units, procs)
    groups, start = [], 0
    for r in range(procs):
        size = base + (1 if r >= procs - extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def _alive(abort: Any, parent_pid: int) -> bool:
    return not abort.is_set() and os.getppid() == parent_pid


def _get(q: Any, abort: Any, parent_pid: int) -> Any:
    """Blocking get that gives up (returns None) when the run is aborted or the parent is gone."""
    while _alive(abort, parent_pid):
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return None


def _put(q: Any, item: Any, abort: Any, parent_pid: int) -> bool:
    while _alive(abort, parent_pid):
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _worker(
    rank: int,
    factory: UnitFactory,
    unit_ids: list[int],
    device: str,
    threads: int,
    inbox: Any,
    outbox: Any,
    reports: Any,
    abort: Any,
    release: Any,
    parent_pid: int,
) -> None:
    """A stage process: build its units, then train on whatever arrives until "stop"."""
    torch.set_num_threads(threads)
    try:
        units = factory(unit_ids, torch.device(device))
        reports.put(("ready", rank, None, None))
        stats, cpu_start = StageStats(), 0.0
        waiting = time.perf_counter()
        while True:
            msg = _get(inbox, abort, parent_pid)
            arrived = time.perf_counter()
            if msg is None:
                return  # aborted or orphaned: the parent reports the cause
            if msg == "stop":
                if outbox is not None:
                    _put(outbox, "stop", abort, parent_pid)
                reports.put(("done", rank, None, stats))
                break
            if stats.steps:
                stats.recv_s += arrived - waiting
            else:  # the wait for the first batch is start-up, not pipeline stall
                cpu_start = time.process_time()
            step, micro, snapshot, monitor = msg
            metrics: dict[str, float] = {}
            for unit in units:
                micro, unit_metrics = unit.train_step(micro, monitor)
                metrics.update(unit_metrics)
            trained = sent = time.perf_counter()
            if outbox is not None:
                if not _put(outbox, (step, micro, snapshot, monitor), abort, parent_pid):
                    return
                sent = time.perf_counter()
            state = None
            if snapshot:
                state = {u.index: {"model": u.model_state(), "training": u.training_state()} for u in units}
            waiting = time.perf_counter()
            stats.work_s += (trained - arrived) + (waiting - sent)
            stats.send_s += sent - trained
            stats.steps += 1
            stats.cpu_s = time.process_time() - cpu_start
            reports.put(("step", rank, step, (metrics, state, replace(stats))))
    except BaseException:
        reports.put(("error", rank, None, traceback.format_exc()))
        raise SystemExit(1) from None
    # Stay until the parent has read everything: shared tensors are handed over through this process.
    while _alive(release, parent_pid) and not abort.is_set():
        time.sleep(_POLL_S)


class LocalPipeline:
    """Runs ENN-ℓ units in `len(groups)` processes. Use as a context manager (always shuts down).

    `submit` feeds one step (a list of micro-batches for unit 0) and returns the steps finished so far;
    `wait(step)` blocks until a step has finished everywhere; `finish()` drains and stops.
    `stage_stats` (each process's latest counters; final after `finish()`) and `feed_blocked_s` (this
    process's time blocked in `submit` on a full first inbox) explain the pipeline's speed.
    """

    def __init__(
        self,
        factory: UnitFactory,
        groups: Sequence[Sequence[int]],
        devices: Sequence[str],
        threads: int = 1,
        timeout: float = 600.0,
    ) -> None:
        if len(devices) != len(groups):
            raise ValueError("one device per process group")
        self.groups = [list(g) for g in groups]
        self.timeout = timeout
        ctx = mp.get_context("spawn")
        self._inboxes = [ctx.Queue(maxsize=_QUEUE_DEPTH) for _ in self.groups]
        self._reports = ctx.Queue()
        self._abort, self._release = ctx.Event(), ctx.Event()
        self._procs = []
        for r, (ids, device) in enumerate(zip(self.groups, devices, strict=True)):
            outbox = self._inboxes[r + 1] if r + 1 < len(self.groups) else None
            args = (r, factory, ids, str(device), threads, self._inboxes[r], outbox, self._reports,
                    self._abort, self._release, os.getpid())
            self._procs.append(ctx.Process(target=_worker, args=args, name=f"enn-local-{r}", daemon=True))
        self._pending: dict[int, dict[int, tuple[dict, dict | None]]] = {}
        self._finished: list[StepReport] = []
        self._done: set[int] = set()
        self._ready: set[int] = set()
        self._in_flight: deque[int] = deque()  # submitted steps not yet finished everywhere, in order
        self._stats = [StageStats() for _ in self.groups]
        self.feed_blocked_s = 0.0

    def __enter__(self) -> LocalPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the stage processes (for monitoring)."""
        return [p.pid for p in self._procs]

    @property
    def stage_stats(self) -> list[StageStats]:
        """Each stage process's cumulative counters (by rank) as last reported; totals after `finish()`."""
        return list(self._stats)

    def start(self) -> None:
        """Start the processes and wait until every one has built its units."""
        for p in self._procs:
            p.start()
        deadline = time.monotonic() + self.timeout
        while len(self._ready) < len(self._procs):
            self._receive(deadline, "building its stages")

    def submit(
        self, step: int, micro_batches: Sequence[Micro], snapshot: bool = False, monitor: bool = False
    ) -> list[StepReport]:
        """Feed step `step` to the first process (blocks while the pipeline is full); returns finished steps.

        `snapshot`: its report carries every unit's state after the step; `monitor`: units add their
        orthogonality error to the metrics (see `LocalUnit.train_step`).
        """
        item = (step, list(micro_batches), snapshot, monitor)
        deadline = time.monotonic() + self.timeout
        feeding = time.perf_counter()
        while True:
            try:
                self._inboxes[0].put(item, timeout=_POLL_S)
                break
            except queue.Full:
                self._drain()
                self._check(deadline, f"accepting step {step}")
        self.feed_blocked_s += time.perf_counter() - feeding
        self._in_flight.append(step)
        self._drain()
        return self._take()

    def wait(self, step: int) -> list[StepReport]:
        """Block until `step` has been trained by every unit; returns the finished steps (in order)."""
        deadline = time.monotonic() + self.timeout
        while step in self._in_flight:
            if self._receive(deadline, f"training step {step}"):
                deadline = time.monotonic() + self.timeout
        return self._take()

    def finish(self) -> list[StepReport]:
        """Let every submitted step finish, stop the processes cleanly, and return the last reports."""
        self.submit_stop()
        deadline = time.monotonic() + self.timeout
        while len(self._done) < len(self._procs):
            if self._receive(deadline, "finishing"):
                deadline = time.monotonic() + self.timeout
        self._release.set()
        for p in self._procs:
            p.join(timeout=self.timeout)
        return self._take()

    def submit_stop(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._inboxes[0].put("stop", timeout=_POLL_S)
                return
            except queue.Full:
                self._drain()
                self._check(deadline, "stopping")

    def close(self) -> None:
        """Stop every process now (idempotent); what was not finished is lost."""
        self._abort.set()
        self._release.set()
        for p in self._procs:
            if p.pid is not None:
                p.join(timeout=2.0)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=2.0)
                if p.is_alive():
                    p.kill()
                    p.join()

    # -- internals -------------------------------------------------------------------------------------

    def _take(self) -> list[StepReport]:
        out, self._finished = self._finished, []
        return out

    def _drain(self) -> None:
        while True:
            try:
                msg = self._reports.get_nowait()
            except queue.Empty:
                return
            self._handle(msg)

    def _receive(self, deadline: float, doing: str) -> bool:
        """Wait up to one poll interval for a report; True when one arrived. Checks the children too."""
        try:
            msg = self._reports.get(timeout=_POLL_S)
        except queue.Empty:
            self._check(deadline, doing)
            return False
        self._handle(msg)
        return True

    def _handle(self, msg: tuple) -> None:
        kind, rank, step, payload = msg
        if kind == "error":
            self._fail(f"ENN-ℓ stage process {rank} ({self._describe(rank)}) failed:\n{payload}")
        elif kind == "ready":
            self._ready.add(rank)
        elif kind == "done":
            self._done.add(rank)
            self._stats[rank] = payload
        else:
            self._pending.setdefault(step, {})[rank] = payload
            self._stats[rank] = payload[2]
            while self._in_flight and len(self._pending.get(self._in_flight[0], ())) == len(self._procs):
                step = self._in_flight.popleft()
                parts = self._pending.pop(step)
                metrics: dict[str, float] = {}
                state: dict[int, dict] | None = None
                for r in sorted(parts):
                    part_metrics, part_state, _ = parts[r]
                    metrics.update(part_metrics)
                    if part_state is not None:
                        state = {**(state or {}), **part_state}
                self._finished.append(StepReport(step, metrics, state, [parts[r][2] for r in sorted(parts)]))

    def _check(self, deadline: float, doing: str) -> None:
        """Raise PipelineError when a child has exited unexpectedly or nothing happened for `timeout` s."""
        for rank, p in enumerate(self._procs):
            if p.exitcode is not None and rank not in self._done:
                detail = self._late_error()
                self._fail(
                    f"ENN-ℓ stage process {rank} ({self._describe(rank)}, pid {p.pid}) exited with code "
                    f"{p.exitcode} while {doing}" + (f":\n{detail}" if detail else "")
                )
        if time.monotonic() > deadline:
            self._fail(f"ENN-ℓ pipeline made no progress for {self.timeout:.0f} s while {doing}")

    def _late_error(self) -> str:
        """A traceback a dying child may have sent just before exiting."""
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                kind, _, _, payload = self._reports.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == "error":
                return str(payload)
        return ""

    def _describe(self, rank: int) -> str:
        ids = self.groups[rank]
        return f"stage {ids[0]}" if len(ids) == 1 else f"stages {ids[0]}–{ids[-1]}"

    def _fail(self, message: str) -> None:
        self.close()
        raise PipelineError(message)
