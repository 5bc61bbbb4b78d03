"""The speed half of bench/local_vs_bp.py: ENN-ℓ pipelined against every way to spend the same cores.

Methods, each measured in fresh processes, interleaved over --repeats rounds (medians): BP at --threads
and at 1 thread, BP with DDP over --procs processes × 1 thread (torchrun, gloo: each rank takes 1/procs
of the config's batch, samples/s counts the global batch), ENN-ℓ sequential at --threads, ENN-ℓ
pipelined over --procs processes × 1 thread.

- speed: preprocessed batches held in memory (no data loading in the timed loop), samples/s over --steps
  timed steps after --warmup. Over the same window, per process: CPU seconds (`process_time`; their sum
  ÷ the window is `cores_busy`, 2.0 = two cores fully used); for the pipeline also each stage process's
  wall seconds working / blocked receiving / blocked sending (the difference of the cumulative
  `StageStats` in the reports of steps warmup and warmup+steps, so a stage's window is its own steps
  warmup+1 … warmup+steps, the wait for the first of them included), the feeder's (this process's) CPU
  share and seconds blocked on a full first inbox, and stage balance = max ÷ mean of the stages' work.
  Peak RSS and sampled peak USS per process.
- e2e: the same methods through `retrieval train` (DDP: torchrun … -m retrieval train), a fresh run of
  warmup+steps steps each, logging every --warmup steps, validation off; the timed seconds are the
  difference of metrics.jsonl's wall_s at steps warmup and warmup+steps (as bench/trainer_vs_open_clip.py),
  so data loading is inside, in the feeding process. The pipelined trainer logs a step when it learns
  that the last stage has finished it (within one 0.1 s queue poll or one batch's loading), so keep the
  window at tens of seconds. CPU seconds of the run's whole process tree (wait4, start-up included) and,
  pipelined, the summary's `pipeline_stats` (whole run, warm-up included).

Each measurement records the 1-minute load average before and after: on a busy machine these are not
speeds. Goal (issue 29): pipelined ≥ 1.8× BP at 1 thread, and ahead of BP's best and of DDP.
This file is also the speed worker: `python bench/local_speed.py --method … ` (started by local_vs_bp).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer_vs_open_clip import ours_timed_seconds

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # what .venv/bin/torchrun runs
GOAL_X_BP_1THREAD = 1.8


@dataclass(frozen=True)
class Method:
    """How a method spends the cores: its config overrides, torch threads per process (None: --threads),
    and whether torchrun starts --procs copies of it (DDP)."""

    overrides: tuple[str, ...]
    threads: int | None = None
    ddp: bool = False


METHODS = {
    "bp": Method(("training.method=bp",)),
    "bp-1thread": Method(("training.method=bp",), 1),
    "bp-ddp": Method(("training.method=bp",), 1, ddp=True),
    "local-sequential": Method(("training.method=local",)),
    "local-pipelined": Method(("training.method=local", "training.pipeline=true"), 1),
}


def worker_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's flags: the driver's own (bench/local_vs_bp.py), passed on."""
    parser = argparse.ArgumentParser(description="one speed measurement (bench/local_vs_bp.py starts it)")
    parser.add_argument("--method", choices=list(METHODS), required=True)
    parser.add_argument("--config", required=True)
    for name in ("threads", "procs", "warmup", "steps"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    return parser.parse_args(argv)


# -- worker side (fresh processes per measurement) -------------------------------------------------------

def _status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _private_kb(pid: int | str) -> tuple[int, int]:
    """(USS, PSS) in kB: memory only this process holds, and its share of pages it shares with others.
    RSS counts the ~520 MB of torch's shared-library pages in full in every process; USS does not."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split()[:2]
        fields[name.rstrip(":")] = int(value)
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


class PeakSampler(threading.Thread):
    """Polls USS/PSS of some processes every `interval` s and keeps each one's maximum: the kernel
    records a peak only for RSS (VmHWM). Peaks shorter than the interval can be missed. Its own CPU time
    (`cpu_s`) is the bench's, not the method's: the worker takes it off its process's."""

    def __init__(self, pids: dict[str, int | str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peak = {name: (0, 0) for name in pids}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for name, pid in self.pids.items():
                uss, pss = _private_kb(pid)
                old = self.peak[name]
                self.peak[name] = (max(old[0], uss), max(old[1], pss))

    def cpu_s(self) -> float:
        """This thread's CPU seconds so far (read from outside it: only while it runs)."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.ident))

    def finish(self) -> dict[str, dict[str, float]]:
        self._done.set()
        self.join()
        return {name: {"uss_mb": u / 1024, "pss_mb": p / 1024} for name, (u, p) in self.peak.items()}


class _Backprop:
    """BP behind the ENN-ℓ runners' submit/wait interface; DDP-wrapped under torchrun, as the trainer does."""

    def __init__(self, cfg: dict, model: Any, env: Any, total: int) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from retrieval.train.optim import build_optimizer, build_scheduler
        from retrieval.train.step import build_loss

        self.cfg, self.model, self.env = cfg, model, env
        self.forward = DistributedDataParallel(model) if env.distributed else model
        self.optimizer = build_optimizer(model, cfg["training"])
        self.scheduler = build_scheduler(self.optimizer, cfg["training"], total)
        self.loss_fn = build_loss(env, str(cfg["training"]["loss"]))

    def __enter__(self) -> _Backprop:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, step: int, micro: Any) -> list:
        from retrieval.train.step import train_step

        train_step(self.forward, self.model, micro, self.loss_fn, self.optimizer, self.scheduler, self.cfg,
                   self.env, step - 1)
        return []

    def wait(self, step: int) -> list:
        return []


def _build(args: argparse.Namespace, method: Method, env: Any) -> tuple[dict, Any, list, dict[str, float]]:
    """Config, runner and 4 in-memory batches (this rank's share under DDP); the memory after imports."""
    import torch

    from retrieval.config import load_config
    from retrieval.model import build_towers
    from retrieval.train.data import build_train_data
    from retrieval.train.local_pipeline import PipelinedRunner, SequentialRunner
    from retrieval.train.local_units import build_units
    from retrieval.train.session import seed_everything
    from retrieval.train.step import set_temperature

    torch.set_num_threads(method.threads or args.threads)
    baseline = {"rss_mb": _status_kb("self", "VmRSS") / 1024, "uss_mb": _private_kb("self")[0] / 1024}
    cfg = load_config(args.config, [*args.overrides, *method.overrides, "data.workers=0",
                                    f"training.pipeline_procs={args.procs}", "training.pipeline_threads=1"])
    seed_everything(int(cfg["training"]["seed"]))
    towers = build_towers(cfg)
    set_temperature(towers.model, float(cfg["training"]["init_temperature"]))
    batches = list(itertools.islice(build_train_data(cfg, towers, env).batches(0), 4))
    total, train = args.warmup + args.steps, cfg["training"]
    if train["method"] == "bp":
        return cfg, _Backprop(cfg, towers.model, env, total), batches, baseline
    units = build_units(cfg, towers.model, env.device, total)
    runner = (PipelinedRunner(cfg, towers.model_cfg, units, total, env.device) if train["pipeline"]
              else SequentialRunner(units))
    return cfg, runner, batches, baseline


def explained(stats: dict[str, Any]) -> dict[str, Any]:
    """`stats` (stages' counters, feeder_cpu_s, feed_blocked_s: `PipelinedRunner.stats`' layout) plus stage
    balance (max ÷ mean of the stages' work seconds) and the feeder's share of all the CPU seconds."""
    work = [s["work_s"] for s in stats["stages"]]
    cpu = stats["feeder_cpu_s"] + sum(s["cpu_s"] for s in stats["stages"])
    return {**stats, "stage_balance": max(work) / statistics.mean(work),
            "feeder_cpu_share": stats["feeder_cpu_s"] / cpu if cpu else 0.0}


def speed_worker(args: argparse.Namespace) -> dict | None:
    """Time `args.method` for warm-up + timed steps; under DDP rank 0 returns every rank's numbers, the
    others None."""
    import torch.distributed as dist

    from retrieval.train.distributed import DistEnv, barrier, init_distributed, shutdown

    method = METHODS[args.method]
    env = init_distributed("cpu") if method.ddp else DistEnv.single()
    cfg, runner, batches, baseline = _build(args, method, env)
    total, reports = args.warmup + args.steps, {}
    with runner:
        pipe = getattr(runner, "pipe", None)
        children = {f"stage_proc_{i}": pid for i, pid in enumerate(pipe.pids if pipe else [])}
        sampler = PeakSampler({"main": "self", **children})
        sampler.start()
        for step in range(1, args.warmup + 1):
            reports.update((r.step, r) for r in runner.submit(step, batches[step % len(batches)]))
        reports.update((r.step, r) for r in runner.wait(args.warmup))
        barrier(env)
        fed = pipe.feed_blocked_s if pipe else 0.0
        cpu, start = time.process_time() - sampler.cpu_s(), time.perf_counter()
        for step in range(args.warmup + 1, total + 1):
            reports.update((r.step, r) for r in runner.submit(step, batches[step % len(batches)]))
        reports.update((r.step, r) for r in runner.wait(total))
        barrier(env)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - sampler.cpu_s() - cpu
        private = sampler.finish()
        rss = {name: _status_kb(pid, "VmHWM") / 1024 for name, pid in {"main": "self", **children}.items()}
        cpu_s = {"main": cpu}
        if pipe:
            stages = zip(reports[args.warmup].stage_stats, reports[total].stage_stats, strict=True)
            window = explained({"stages": [asdict(end - begin) for begin, end in stages], "feeder_cpu_s": cpu,
                                "feed_blocked_s": pipe.feed_blocked_s - fed})
            cpu_s.update({f"stage_proc_{i}": s["cpu_s"] for i, s in enumerate(window["stages"])})
    if env.distributed:  # one process per rank: gather each rank's own numbers
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, (cpu, rss["main"], private["main"]))
        shutdown(env)
        if env.rank:
            return None
        cpu_s = {f"rank_{r}": g[0] for r, g in enumerate(gathered)}
        rss = {f"rank_{r}": g[1] for r, g in enumerate(gathered)}
        private = {f"rank_{r}": g[2] for r, g in enumerate(gathered)}
    batch = int(cfg["training"]["batch_size"])  # the global batch, also under DDP
    out = {"samples_per_s": args.steps * batch / elapsed, "step_s": elapsed / args.steps, "timed_s": elapsed,
           "cpu_s": cpu_s, "cores_busy": sum(cpu_s.values()) / elapsed, "peak_rss_mb": rss,
           "baseline_rss_mb": baseline["rss_mb"], "peak_private_mb": private,
           "baseline_uss_mb": baseline["uss_mb"]}
    if pipe:
        out["pipeline"] = window
    return out


# -- driver side ----------------------------------------------------------------------------------------

def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def run_worker(args: argparse.Namespace, method: str) -> dict:
    """One speed measurement in fresh processes (clean peak-memory accounting, own thread settings)."""
    spec = METHODS[method]
    worker = [str(Path(__file__).resolve()), "--method", method, "--config", args.config,
              "--threads", str(args.threads), "--procs", str(args.procs), "--warmup", str(args.warmup),
              "--steps", str(args.steps), *[f"--set={o}" for o in args.overrides]]
    cmd = [*TORCHRUN, "--nproc-per-node", str(args.procs), *worker] if spec.ddp else [sys.executable, *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads or args.threads)}
    load = os.getloadavg()[0]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"speed {method} failed:\n{result.stderr[-3000:]}")
    return {**_last_json(result.stdout), "load_before": load, "load_after": os.getloadavg()[0]}


def run_e2e(args: argparse.Namespace, method: str, name: str) -> dict:
    """`retrieval train` for warmup+steps steps (torchrun for DDP); samples/s from metrics.jsonl."""
    spec = METHODS[method]
    run = Path(args.runs) / "e2e" / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    threads = spec.threads or args.threads
    sets = [*spec.overrides, *args.overrides, f"training.max_steps={args.warmup + args.steps}",
            f"training.log_every_steps={args.warmup}", "training.save_every_steps=0", "data.val_split=null",
            f"training.threads={threads}", f"training.pipeline_procs={args.procs}", "training.pipeline_threads=1"]
    train = ["-m", "retrieval", "train", "--config", args.config, "--out", str(run), *[f"--set={s}" for s in sets]]
    cmd = [*TORCHRUN, "--nproc-per-node", str(args.procs), *train] if spec.ddp else [sys.executable, *train]
    load, start = os.getloadavg()[0], time.perf_counter()
    with (run / "stdout.txt").open("w") as out, (run / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        # wait4: the run's rusage, which covers its reaped children (stage processes, torchrun's ranks) too
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"e2e {method} failed (exit {proc.returncode}):\n{(run / 'stderr.txt').read_text()[-3000:]}")
    from retrieval.config import load_config

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = ours_timed_seconds(records, args.warmup, args.steps)
    batch = int(load_config(args.config, sets)["training"]["batch_size"])
    result = {"samples_per_s": args.steps * batch / timed, "timed_s": timed, "wall_s": time.perf_counter() - start,
              "cpu_s_run": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
              "load_before": load, "load_after": os.getloadavg()[0]}
    stats = _last_json((run / "stdout.txt").read_text()).get("pipeline_stats")
    if stats:
        result["pipeline_stats"] = explained(stats)
    return result


def versus(rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each method's samples/s ÷ BP at 1 thread, ÷ BP at its best thread count, ÷ DDP (those measured)."""
    bp = [rates[m] for m in ("bp", "bp-1thread") if m in rates]
    bases = {"x_bp_1thread": rates.get("bp-1thread"), "x_bp_best": max(bp) if bp else None,
             "x_ddp": rates.get("bp-ddp")}
    return {m: {k: rate / base for k, base in bases.items() if base} for m, rate in rates.items()}


def goal(vs: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Issue 29's goal for the pipelined method, per comparison measured: ≥ 1.8× BP at 1 thread, ahead of
    BP's best and of DDP."""
    pipe = vs.get("local-pipelined", {})
    limits = {"x_bp_1thread": GOAL_X_BP_1THREAD, "x_bp_best": 1.0, "x_ddp": 1.0}
    return {f"{k} >= {limit}": pipe[k] >= limit for k, limit in limits.items() if k in pipe}


def _median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its memory, CPU and load numbers come with it), plus the spread."""
    ordered = sorted(runs, key=lambda r: r["samples_per_s"])
    return {**ordered[len(ordered) // 2], "samples_per_s_all": [r["samples_per_s"] for r in runs]}


def measure(args: argparse.Namespace, part: str) -> dict:
    """The `speed` or `e2e` part: every method per round, rounds interleaved; medians, ratios, goal, table."""
    load = os.getloadavg()[0]
    rounds = [{m: run_worker(args, m) if part == "speed" else run_e2e(args, m, f"{m}-r{r}") for m in args.methods}
              for r in range(args.repeats)]
    methods = {m: _median_run([rnd[m] for rnd in rounds]) for m in args.methods}
    vs = versus({m: r["samples_per_s"] for m, r in methods.items()})
    out = {"overrides": args.overrides, "load_before": load, "load_after": os.getloadavg()[0],
           "threads": args.threads, "procs": args.procs, "warmup_steps": args.warmup, "timed_steps": args.steps,
           "repeats": args.repeats, "methods": methods, "versus": vs, "goal": goal(vs), "rounds": rounds}
    print_table(part, out)
    return out


def print_table(part: str, out: dict) -> None:
    """The part's table: samples/s and ratios per method, then memory, CPU and the pipeline's accounting."""
    what = "in-memory batches" if part == "speed" else "retrieval train end to end"
    print(f"\n{part} ({what}; {out['timed_steps']} timed steps after {out['warmup_steps']}; "
          f"load {out['load_before']:.1f} → {out['load_after']:.1f})")
    print(f"{'method':18} {'samples/s':>9} {'× BP-1t':>8} {'× BP-best':>9} {'× DDP':>6} {'CPU s':>7} {'load':>11}")
    for m, r in out["methods"].items():
        vs = out["versus"][m]
        x = [f"{vs[k]:.2f}" if k in vs else "–" for k in ("x_bp_1thread", "x_bp_best", "x_ddp")]
        cpu = sum(r["cpu_s"].values()) if part == "speed" else r["cpu_s_run"]
        print(f"{m:18} {r['samples_per_s']:9.1f} {x[0]:>8} {x[1]:>9} {x[2]:>6} {cpu:7.1f} "
              f"{r['load_before']:5.2f}→{r['load_after']:<5.2f}")
    for m, r in out["methods"].items():
        if part == "speed":
            mem = ", ".join(f"{k} {v:.0f} / {r['peak_private_mb'][k]['uss_mb']:.0f}"
                            for k, v in r["peak_rss_mb"].items())
            print(f"  {m}: peak RSS / USS MB: {mem}; CPU s: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items()))
        stats = r.get("pipeline") or r.get("pipeline_stats")
        if stats:
            stages = "; ".join(f"stage {i}: work {s['work_s']:.1f}, recv {s['recv_s']:.1f}, "
                               f"send {s['send_s']:.1f}, CPU {s['cpu_s']:.1f}" for i, s in enumerate(stats["stages"]))
            print(f"  {m}: {stages} s; balance {stats['stage_balance']:.2f}; feeder CPU "
                  f"{stats['feeder_cpu_s']:.1f} s ({stats['feeder_cpu_share']:.0%}), blocked "
                  f"{stats['feed_blocked_s']:.1f} s")
    if out["goal"]:
        verdicts = (f"{k} {'met' if ok else 'MISSED'}" for k, ok in out["goal"].items())
        print("goal (pipelined): " + ", ".join(verdicts))


if __name__ == "__main__":
    result = speed_worker(worker_args())
    if result is not None:
        print(json.dumps(result))
