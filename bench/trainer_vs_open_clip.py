"""Our trainer beside open_clip's own (`open_clip_train.main`): samples/s and peak memory on the same work.

Both trainers get the same open_clip model config (`--config`'s model section, registered with
`open_clip.add_model_config`), the same training pairs (one caption per train image of the synth set, in
a TSV that open_clip's CsvDataset and our CSV reader both read), batch size, precision, torch threads
(OMP_NUM_THREADS, and `training.threads` for ours), data-loader workers, optimizer settings and seed. The
TSV holds exactly (warm-up + timed steps) × batch pairs, so each trainer runs one epoch and no epoch
boundary falls inside the timed steps. Every run is a fresh process:

- open_clip: `open_clip_train.main` with `--log-every-n-steps 1`; a step's time is the batch time it logs
  (from the end of the previous step to the end of this one: data wait, forward, backward, update).
- ours (`retrieval train`, backprop): `plain` (enn.enabled=false), `enn-penalty`, `enn-exact`,
  `enn-penalty-lazy4` (the penalty every 4th step at 4·λ, `enn.penalty_every=4`). The time of
  the timed steps is the difference of metrics.jsonl's `wall_s` between the records of step `warmup` and
  step `warmup + steps` (the trainer logs every `warmup` steps, so each log's own cost is counted too).

samples/s = timed steps × batch ÷ their time, the same steps (warmup+1 … warmup+steps) for every trainer.
Memory per run: peak RSS of the largest process (the trainer; `wait4`'s ru_maxrss, which covers its
reaped data workers too) and the peak over time of the PSS summed over the trainer and its workers
(shared pages counted once), sampled every 0.2 s. The load average before and after each run is
recorded: the numbers mean something only on an otherwise idle machine. Goal (issue 12): plain ≥ 1.0×
open_clip's samples/s, each ENN variant ≥ 0.95×.

    python bench/trainer_vs_open_clip.py                                       # defaults below
    python bench/trainer_vs_open_clip.py --steps 100 --warmup 10 --threads 2 --workers 1 --repeats 3
    python bench/trainer_vs_open_clip.py --steps 6 --warmup 2 --batch-size 32 # a smoke run

Prints a table and writes bench/results/trainer_vs_open_clip.json (scratch files under --work).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "open_clip": None,
    "plain": ["enn.enabled=false"],
    "enn-penalty": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=1"],  # as published
    "enn-exact": ["enn.enabled=true", "enn.ortho=exact"],
    "enn-penalty-lazy4": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=4"],
}
GOALS = {"plain": 1.0, "enn-penalty": 0.95, "enn-exact": 0.95, "enn-penalty-lazy4": 0.95}  # × open_clip's samples/s
IMG_KEY, CAPTION_KEY = "filepath", "title"  # open_clip's default --csv-img-key / --csv-caption-key
PRECISION = {"fp32": "fp32", "bf16": "amp_bf16"}  # ours → open_clip (autocast to bf16 in both)
# Registers the model config, then runs open_clip's trainer as `python -m open_clip_train.main` would.
OPEN_CLIP_MAIN = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
                  "from open_clip_train.main import main; sys.exit(main(sys.argv[2:]))")
# open_clip_train/train.py logs, per step with --log-every-n-steps 1:
# "Train Epoch: 0 [ 64/192 (33%)] Data (t): 0.012 Batch (t): 0.345, 92.7536/s, 92.7536/s/gpu LR: ..."
_OPEN_CLIP_STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .*?Batch \(t\): [\d.]+, ([\d.eE+-]+)/s,")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml",
                        help="run config: its model section is the model both trainers build")
    parser.add_argument("--data", default="data/synth/dataset.json", help="Karpathy-format dataset (train split)")
    parser.add_argument("--images", default="data/synth/images")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones (≥ 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's training.batch_size")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per trainer (default: the cores this process may use minus --workers)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the config's)")
    parser.add_argument("--precision", choices=list(PRECISION), default=None,
                        help="default: bf16 on CUDA, fp32 on CPU (as `training.precision: auto`)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the variants (interleaved, so load drift hits all alike); medians")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--work", default="runs/trainer_vs_open_clip", help="scratch: TSV, model config, runs, logs")
    parser.add_argument("--out", default="bench/results/trainer_vs_open_clip.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be ≥ 1 (the first step carries the start-up)")
    return args


# -- pure helpers (tested in tests/test_bench_trainer_vs_open_clip.py) ------------------------------------

def training_pairs(dataset: dict[str, Any], images: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (absolute image path, caption) pairs: the first train images, one caption each, drawn by
    (seed, image index). Distinct images, so our reader (which groups rows by image) keeps every row."""
    train = [im for im in dataset["images"] if im.get("split") == "train"]
    if count > len(train):
        raise SystemExit(f"(warm-up + steps) × batch = {count} pairs, but {len(train)} train images: fewer steps "
                         "or a smaller batch (one epoch must cover the run)")
    pairs = []
    for index, image in enumerate(train[:count]):
        captions = [s["raw"] for s in image["sentences"]]
        caption = captions[random.Random(f"{seed}:{index}").randrange(len(captions))]
        path = images / image.get("filepath", "") / image["filename"]
        pairs.append((str(path.resolve()), caption))
    return pairs


def write_pairs(pairs: Sequence[tuple[str, str]], path: Path) -> None:
    """A tab-separated file with a `filepath` / `title` header, as open_clip's CsvDataset reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow([IMG_KEY, CAPTION_KEY])
        writer.writerows(pairs)


def open_clip_argv(model: str, data: Path, logs: Path, name: str, batch: int, workers: int, precision: str,
                   device: str, train_cfg: dict[str, Any]) -> list[str]:
    """open_clip_train.main's arguments for one epoch over `data`, with our config's optimizer settings."""
    beta1, beta2 = (float(b) for b in train_cfg["betas"])
    argv = ["--train-data", str(data), "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", IMG_KEY, "--csv-caption-key", CAPTION_KEY, "--model", model,
            "--batch-size", str(batch), "--workers", str(workers), "--precision", PRECISION[precision],
            "--device", device, "--epochs", "1", "--warmup", str(train_cfg["warmup_steps"]),
            "--lr", str(train_cfg["lr"]), "--wd", str(train_cfg["weight_decay"]), "--beta1", str(beta1),
            "--beta2", str(beta2), "--eps", str(train_cfg["eps"]), "--seed", str(train_cfg["seed"]),
            "--log-every-n-steps", "1", "--logs", str(logs), "--name", name]
    if train_cfg["grad_clip"]:
        argv += ["--grad-clip-norm", str(train_cfg["grad_clip"])]
    if train_cfg["loss"] == "siglip":
        argv.append("--siglip")
    return argv


def our_overrides(variant: str, data: Path, images: Path, batch: int, workers: int, threads: int, precision: str,
                  device: str, warmup: int) -> list[str]:
    """`--set` pairs for `retrieval train`: the variant, the pairs file, one epoch, logs at step `warmup`.

    The same work as open_clip's trainer per step: its train augmentation, every image decoded from its file
    (no decoded-image cache), the default memory layout.
    """
    return [*VARIANTS[variant], "training.method=bp", "data.format=csv", "data.augment=true",
            "data.cache_images=false", "training.channels_last=false", f"data.path={data}", f"data.images={images}",
            f"data.csv_img_key={IMG_KEY}", f"data.csv_caption_key={CAPTION_KEY}", 'data.csv_separator="\\t"',
            "data.train_splits=[train]", "data.val_split=null", "data.captions=random", f"data.workers={workers}",
            "training.epochs=1", "training.max_steps=null", f"training.batch_size={batch}", "training.accum_steps=1",
            f"training.threads={threads}", f"training.precision={precision}", f"training.device={device}",
            f"training.log_every_steps={warmup}", "training.save_every_steps=0"]


def open_clip_step_seconds(log: str, batch: int) -> dict[int, float]:
    """Step number (1-based) → seconds, from open_clip_train's per-step log lines (batch ÷ its samples/s)."""
    steps = {}
    for match in _OPEN_CLIP_STEP.finditer(log):
        epoch, seen, per_epoch, rate = int(match[1]), int(match[2]), int(match[3]), float(match[4])
        steps[epoch * (per_epoch // batch) + seen // batch] = batch / rate
    return steps


def timed_rate(step_seconds: dict[int, float], warmup: int, steps: int, batch: int) -> float:
    """samples/s over steps warmup+1 … warmup+steps."""
    window = range(warmup + 1, warmup + steps + 1)
    missing = [s for s in window if s not in step_seconds]
    if missing:
        raise ValueError(f"no time logged for step(s) {missing[:5]}")
    return steps * batch / sum(step_seconds[s] for s in window)


def ours_timed_seconds(records: Sequence[dict[str, Any]], warmup: int, steps: int) -> float:
    """Seconds between our train records at step `warmup` and step `warmup + steps` (metrics.jsonl wall_s)."""
    wall = {r["step"]: r["wall_s"] for r in records if r.get("kind") == "train"}
    for step in (warmup, warmup + steps):
        if step not in wall:
            raise ValueError(f"metrics.jsonl has no train record at step {step} (logged: {sorted(wall)[:8]} …)")
    return wall[warmup + steps] - wall[warmup]


def ratios(rates: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each of our variants' samples/s ÷ open_clip's, and whether it meets its goal."""
    if "open_clip" not in rates:
        return {}
    base = rates["open_clip"]
    return {v: {"x_open_clip": rate / base, "goal": GOALS[v], "met": rate / base >= GOALS[v]}
            for v, rate in rates.items() if v in GOALS}


# -- measurement ----------------------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/*/stat parent links)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, p in parent.items() if p in frontier]
        tree += frontier
    return tree


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass  # the process has just ended
    return 0


class TreePss(threading.Thread):
    """Samples the PSS summed over a process tree every `interval` s and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _descendants(self.pid)))

    def finish(self) -> float:
        self._done.set()
        self.join()
        return self.peak_kb / 1024


def run_process(cmd: list[str], log: Path, timeout: float, threads: int) -> dict[str, float]:
    """Run `cmd` (output to `log`) with OMP_NUM_THREADS=threads; wall time, peak RSS and peak tree PSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        sampler = TreePss(proc.pid)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        # wait4: this child's own rusage; its ru_maxrss is the largest peak RSS in its (reaped) tree.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        timer.cancel()
    peak_pss = sampler.finish()
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} … failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024,
            "peak_pss_mb": peak_pss, "load_before": load_before, "load_after": os.getloadavg()[0]}


def run_open_clip(s: argparse.Namespace, name: str) -> dict[str, Any]:
    logs = s.work / "open_clip_logs"
    shutil.rmtree(logs / name, ignore_errors=True)  # open_clip refuses an existing experiment name
    argv = open_clip_argv(s.model_name, s.pairs, logs, name, s.batch, s.workers, s.precision, s.device, s.train_cfg)
    cmd = [sys.executable, "-c", OPEN_CLIP_MAIN, str(s.model_dir), *argv]
    result = run_process(cmd, s.work / f"{name}.log", s.timeout, s.threads)
    seconds = open_clip_step_seconds((logs / name / "out.log").read_text(), s.batch)
    result["samples_per_s"] = timed_rate(seconds, s.warmup, s.steps, s.batch)
    result["timed_s"] = s.steps * s.batch / result["samples_per_s"]
    return result


def run_ours(s: argparse.Namespace, variant: str, name: str) -> dict[str, Any]:
    from retrieval.config import load_config, save_config

    run = s.work / name
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config(s.config, our_overrides(variant, s.pairs, s.images, s.batch, s.workers, s.threads,
                                              s.precision, s.device, s.warmup))
    config = s.work / f"{name}.yaml"
    save_config(cfg, config)
    cmd = [sys.executable, "-m", "retrieval", "train", "--config", str(config), "--out", str(run)]
    result = run_process(cmd, s.work / f"{name}.log", s.timeout, s.threads)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result["timed_s"] = ours_timed_seconds(records, s.warmup, s.steps)
    result["samples_per_s"] = s.steps * s.batch / result["timed_s"]
    return result


def prepare(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the settings both trainers share; write the pairs TSV and the open_clip model config."""
    import open_clip
    import torch

    from retrieval.config import load_config
    from retrieval.device import usable_cores
    from retrieval.model import open_clip_model_cfg

    cfg = load_config(args.config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = int(cfg["data"]["workers"]) if args.workers is None else args.workers
    s = argparse.Namespace(
        config=args.config, steps=args.steps, warmup=args.warmup, timeout=args.timeout, device=device,
        batch=args.batch_size or int(cfg["training"]["batch_size"]), workers=workers,
        threads=args.threads or max(1, usable_cores() - workers),
        precision=args.precision or ("bf16" if device.startswith("cuda") else "fp32"),
        work=Path(args.work).resolve(), images=Path(args.images).resolve(), train_cfg=cfg["training"],
    )
    s.pairs = s.work / "train_pairs.tsv"
    dataset = json.loads(Path(args.data).read_text())
    write_pairs(training_pairs(dataset, s.images, (s.warmup + s.steps) * s.batch, int(cfg["training"]["seed"])),
                s.pairs)
    # The model both build: our config's model section as an open_clip model config, under a name of its own.
    s.model_name = f"bench-{Path(args.config).stem}"
    s.model_dir = s.work / "model_configs"
    s.model_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip_model_cfg(cfg["model"])
    (s.model_dir / f"{s.model_name}.json").write_text(json.dumps(model_cfg, indent=1))
    s.model_cfg = model_cfg
    s.versions = {"torch": torch.__version__, "open_clip": open_clip.__version__,
                  "python": platform.python_version()}
    return s


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    s = prepare(args)
    load_start = os.getloadavg()
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.repeats):
        results = {}
        for variant in args.variants:
            name = f"{variant}-r{r}"
            print(f"[{r + 1}/{args.repeats}] {variant} …", flush=True)
            results[variant] = run_open_clip(s, name) if variant == "open_clip" else run_ours(s, variant, name)
        rounds.append(results)
    # Per variant, the run with the median samples/s (its memory and load numbers come with it).
    variants = {}
    for variant in args.variants:
        runs = sorted((rnd[variant] for rnd in rounds), key=lambda x: x["samples_per_s"])
        variants[variant] = {**runs[len(runs) // 2], "samples_per_s_all": [x["samples_per_s"] for x in runs]}
    rates = {v: r["samples_per_s"] for v, r in variants.items()}
    vs = ratios(rates)
    load_end = os.getloadavg()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": _cpu_name(), "cores": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "versions": s.versions,
        "settings": {"config": s.config, "model": s.model_name, "model_cfg": s.model_cfg, "device": s.device,
                     "precision": s.precision, "batch_size": s.batch, "threads": s.threads, "workers": s.workers,
                     "warmup_steps": s.warmup, "timed_steps": s.steps, "repeats": args.repeats,
                     "pairs": (s.warmup + s.steps) * s.batch},
        "load_average": {"start": load_start, "end": load_end},
        "variants": variants,
        "vs_open_clip": vs,
        "rounds": rounds,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{s.steps} timed steps after {s.warmup} warm-up, batch {s.batch}, {s.precision} on {s.device}, "
          f"{s.threads} thread(s), {s.workers} worker(s); load average {load_start[0]:.2f} → {load_end[0]:.2f}")
    print(f"{'variant':12} {'samples/s':>10} {'× open_clip':>12} {'goal':>6} {'peak RSS MB':>12} "
          f"{'peak PSS MB':>12} {'load':>11}")
    for v, r in variants.items():
        ratio = vs.get(v, {})
        x = f"{ratio['x_open_clip']:.3f}" if ratio else ("1.000" if v == "open_clip" and vs else "–")
        goal = (f"{'met' if ratio['met'] else 'MISSED'}" if ratio else "")
        print(f"{v:12} {r['samples_per_s']:10.1f} {x:>12} {goal:>6} {r['peak_rss_mb']:12.0f} {r['peak_pss_mb']:12.0f} "
              f"{r['load_before']:5.2f}→{r['load_after']:<5.2f}")
    if args.repeats > 1:
        spread = {v: max(r["samples_per_s_all"]) / min(r["samples_per_s_all"]) - 1 for v, r in variants.items()}
        print("spread over repeats (max/min − 1): " + ", ".join(f"{v} {x:.1%}" for v, x in spread.items()))
    print(f"wrote {out}")
    return 0 if all(math.isfinite(x) for x in rates.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
