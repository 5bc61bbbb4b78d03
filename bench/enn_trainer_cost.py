"""What an ENN step costs through the real trainer, on the shipped recipe, and what is spent outside the step.

bench/enn_profile.py times `train_step` on a random batch in one process; bench/trainer_vs_open_clip.py times
whole trainers on open_clip's settings (NCHW images, augmentation, a loader worker). Neither is what a user of
`configs/synth-small.yaml` runs: this bench is. Each measurement is a fresh `retrieval`-trainer process
(`retrieval.train.loop.train_bp` on the config, validation off) whose `train_step` is wrapped with a clock,
so the same run gives the loop's time per step (data, step, logging, monitoring) and the step's own: a gap
that grows with ENN would be trainer-side ENN work (the orthogonality monitor at each log record is one).
Variants and thread counts are interleaved over `--repeats`, the load average is recorded around every
run, and the medians over repeats are compared with plain's from the same invocation.

    .venv/bin/python bench/enn_trainer_cost.py                       # plain, ENN-penalty, lazy, exact, lazy + plain pool; 1 and 2 threads
    .venv/bin/python bench/enn_trainer_cost.py --threads 1 --set training.channels_last=false

Prints a table and writes bench/results/enn_trainer_cost.json (--out to change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enn_vs_plain import VARIANTS as ENN_VS_PLAIN_VARIANTS

ROOT = Path(__file__).resolve().parent.parent
# The same named variants as the recall bench (one definition of what each name sets): the attention-pool one is
# issue 30's lazy penalty with the image tower's largest ENN layers left plain.
VARIANTS = {name: ENN_VS_PLAIN_VARIANTS[name]
            for name in ("plain", "enn-penalty", "enn-penalty-lazy4", "enn-exact", "enn-lazy4-plain-pool")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="bench/results/enn_trainer_cost.json")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def worker(args: argparse.Namespace) -> dict[str, float]:
    """One trainer run; ms per timed step for the whole loop and inside `train_step`, CPU and wall."""
    import retrieval.train.loop as loop
    from retrieval.config import load_config

    total = args.warmup + args.steps
    cfg = load_config(args.config, [*VARIANTS[args.worker], *args.overrides, f"training.max_steps={total}",
                                    f"training.threads={args.worker_threads}", "data.val_split=null",
                                    "training.save_every_steps=0"])
    clocks = {"step_wall": 0.0, "step_cpu": 0.0}
    marks: list[tuple[float, float]] = []
    calls = 0
    real_step = loop.train_step

    def timed_step(*a: Any, **k: Any) -> Any:
        nonlocal calls
        if calls == args.warmup:
            marks.append((time.perf_counter(), time.process_time()))
        wall, cpu = time.perf_counter(), time.process_time()
        result = real_step(*a, **k)
        if calls >= args.warmup:
            clocks["step_wall"] += time.perf_counter() - wall
            clocks["step_cpu"] += time.process_time() - cpu
        calls += 1
        if calls == total:
            marks.append((time.perf_counter(), time.process_time()))
        return result

    loop.train_step = timed_step
    out = Path(tempfile.mkdtemp(prefix="enn_trainer_cost_"))
    try:
        loop.train_bp(cfg, out / "run")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    (w0, c0), (w1, c1) = marks
    per_step = 1e3 / args.steps
    return {"loop_wall_ms": (w1 - w0) * per_step, "loop_cpu_ms": (c1 - c0) * per_step,
            "step_wall_ms": clocks["step_wall"] * per_step, "step_cpu_ms": clocks["step_cpu"] * per_step}


def measure(args: argparse.Namespace, variant: str, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant, "--worker-threads", str(threads), "--config", args.config,
           "--steps", str(args.steps), "--warmup", str(args.warmup), *[f"--set={o}" for o in args.overrides]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"{variant} at {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def summarise(rounds: list[dict[str, Any]], variants: list[str], threads: list[int]) -> dict[str, Any]:
    """Medians over repeats per (threads, variant); ratios to plain at the same thread count."""
    table: dict[str, Any] = {}
    for t in threads:
        rows = {}
        for v in variants:
            runs = [r for r in rounds if r["variant"] == v and r["threads"] == t]
            row = {k: statistics.median(r[k] for r in runs)
                   for k in ("loop_wall_ms", "loop_cpu_ms", "step_wall_ms", "step_cpu_ms")}
            row["outside_wall_ms"] = row["loop_wall_ms"] - row["step_wall_ms"]
            row["spread_loop_wall"] = max(r["loop_wall_ms"] for r in runs) / min(r["loop_wall_ms"] for r in runs) - 1
            rows[v] = row
        if "plain" in rows:
            for row in rows.values():
                row["loop_ratio"] = row["loop_wall_ms"] / rows["plain"]["loop_wall_ms"]
                row["step_ratio"] = row["step_wall_ms"] / rows["plain"]["step_wall_ms"]
        table[f"{t}_threads"] = rows
    return table


def print_table(table: dict[str, Any]) -> None:
    print(f"{'threads':<10}{'variant':<20}{'loop ms':>9}{'step ms':>9}{'outside':>9}{'loop ×':>8}{'step ×':>8}"
          f"{'spread':>8}")
    for key, rows in table.items():
        for v, row in rows.items():
            print(f"{key.split('_')[0]:<10}{v:<20}{row['loop_wall_ms']:9.1f}{row['step_wall_ms']:9.1f}"
                  f"{row['outside_wall_ms']:9.1f}{row.get('loop_ratio', 0):8.3f}{row.get('step_ratio', 0):8.3f}"
                  f"{100 * row['spread_loop_wall']:7.1f}%")


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    threads = [int(t) for t in args.threads.split(",")]
    started, load_start = datetime.datetime.now(datetime.UTC), os.getloadavg()
    rounds = []
    for repeat in range(args.repeats):
        order = args.variants[repeat % len(args.variants):] + args.variants[:repeat % len(args.variants)]
        for t in threads:
            for v in order:
                result = {"variant": v, "threads": t, "repeat": repeat, **measure(args, v, t)}
                print(f"[{time.strftime('%H:%M:%S')}] {v} {t} thread(s): loop {result['loop_wall_ms']:.1f} ms, "
                      f"step {result['step_wall_ms']:.1f} ms (load {result['load_before']})", flush=True)
                rounds.append(result)
    table = summarise(rounds, args.variants, threads)
    print_table(table)
    report = {"benchmark": "enn_trainer_cost", "date": started.strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "bench/enn_trainer_cost.py", *sys.argv[1:]]),
              "config": args.config, "overrides": args.overrides, "steps": args.steps, "warmup": args.warmup,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "load_average": {"start": [round(x, 2) for x in load_start],
                               "end": [round(x, 2) for x in os.getloadavg()]},
              "summary": table, "rounds": rounds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
