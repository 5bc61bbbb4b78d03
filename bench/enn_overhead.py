"""ENN overhead: training-step and inference time of ENN open_clip towers relative to plain ones.

Training step = forward + backward + AdamW step on an open_clip ViT tower and text tower, as the trainer
runs it (each ENN weight formed once per step under ``parametrize.cached()``, exact mode retracted after
the step): plain vs ENN-"penalty" (penalty term included in the loss) vs ENN-"exact", plus the penalty
step without caching for reference. Inference = eval forward (no grad): plain vs merged (enn.merge of the
trained ENN tower, what every inference path runs), plus the unmerged ENN tower with and without
``parametrize.cached()`` for reference. Variants run interleaved, round-robin, in one process,
and each time is the median of ``--runs`` after ``--warmup`` steps, so ratios share the same conditions.

Usage: .venv/bin/python bench/enn_overhead.py [--runs 7] [--warmup 2] [--threads 2[,1]]
Writes bench/results/enn_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn
from torch.nn.utils import parametrize

import enn

RESULTS = Path(__file__).resolve().parent / "results" / "enn_overhead.json"
PENALTY_WEIGHT = 1e-4
TARGETS = {"penalty": 1.10, "exact": 1.30}
DEFAULT_BATCH = 64
TOWERS = {
    "vit": {"image_size": 64, "patch_size": 8, "width": 256, "layers": 6, "heads": 4},
    "text": {"context_length": 32, "vocab_size": 49408, "width": 256, "layers": 6, "heads": 4},
}


def build_tower(name: str, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """One open_clip tower (as open_clip builds it) and a batch of inputs for it."""
    cfg = TOWERS[name]
    g = torch.Generator().manual_seed(0)
    if name == "vit":
        model = VisionTransformer(
            image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=cfg["width"],
            layers=cfg["layers"], heads=cfg["heads"], mlp_ratio=4.0, output_dim=cfg["width"],
        )
        x = torch.randn(batch, 3, cfg["image_size"], cfg["image_size"], generator=g)
    else:
        model = TextTransformer(
            context_length=cfg["context_length"], vocab_size=cfg["vocab_size"], width=cfg["width"],
            heads=cfg["heads"], layers=cfg["layers"], output_dim=cfg["width"],
        )
        x = torch.randint(1, cfg["vocab_size"], (batch, cfg["context_length"]), generator=g)
    return model, x


def make_step(model: nn.Module, x: torch.Tensor, penalty: bool, cached: bool = True) -> Callable[[], None]:
    """A closure running one training step (forward, loss, backward, AdamW; exact mode retracted after it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    enn.retract_after_step(opt, model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with parametrize.cached() if cached else contextlib.nullcontext():
            loss = model(x).square().mean()
            if penalty:
                loss = loss + PENALTY_WEIGHT * enn.orthogonality_loss(model)
            loss.backward()
        opt.step()

    return step


def make_forward(model: nn.Module, x: torch.Tensor, cached: bool = False) -> Callable[[], None]:
    """A closure running one inference forward pass."""
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            if cached:
                with parametrize.cached():
                    model(x)
            else:
                model(x)

    return forward


def time_interleaved(
    fns: dict[str, Callable[[], None]], runs: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per call for each fn, calls interleaved round-robin (rotating start).

    CPU time is recorded too because the machine is shared: it is far less sensitive to other processes.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for i in range(runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def bench_tower(name: str, batch: int, runs: int, warmup: int) -> dict:
    """Train-step and forward timings for one tower; returns medians (ms), ratios and raw times."""
    plain, x = build_tower(name, batch)
    penalty = enn.convert(copy.deepcopy(plain), ortho="penalty")
    exact = enn.convert(copy.deepcopy(plain), ortho="exact")
    train = time_interleaved(
        {
            "plain": make_step(plain, x, penalty=False),
            "penalty": make_step(penalty, x, penalty=True),
            # Same ENN tower without the penalty term: splits the overhead into W = QΛPᵀ vs the penalty.
            "penalty_noterm": make_step(penalty, x, penalty=False),
            # Without parametrize.cached(): what a step cost before each weight was formed once.
            "penalty_uncached": make_step(penalty, x, penalty=True, cached=False),
            "exact": make_step(exact, x, penalty=False),
        },
        runs, warmup,
    )
    merged = enn.merge(copy.deepcopy(penalty))  # the trained ENN tower, folded back to plain weights
    forward = time_interleaved(
        {
            "plain": make_forward(plain, x),
            "merged": make_forward(merged, x),
            "enn": make_forward(penalty, x),
            "enn_cached": make_forward(penalty, x, cached=True),
        },
        runs, warmup,
    )
    out = {"config": {**TOWERS[name], "batch": batch}, "train": {}, "forward": {}}
    for section, times in (("train", train), ("forward", forward)):
        base = {clock: statistics.median(times["plain"][clock]) for clock in ("wall", "cpu")}
        for variant, clocks in times.items():
            row = {}
            for clock, ts in clocks.items():
                med = statistics.median(ts)
                row[f"{clock}_median_ms"] = round(1e3 * med, 2)
                row[f"{clock}_ratio"] = round(med / base[clock], 3)
                row[f"{clock}_runs_ms"] = [round(1e3 * t, 2) for t in ts]
            out[section][variant] = row
    return out


def print_table(setting: dict) -> None:
    """Human-readable summary of one thread setting (ratios are vs plain, measured in the same run)."""
    load = ", ".join(f"{x:.1f}" for x in setting["loadavg_before"])
    print(f"\nthreads={setting['threads']} batch={setting['batch']}  (load average 1/5/15 min before: {load})")
    print(f"{'tower':6} {'measure':8} {'variant':15} {'wall ms':>9} {'x plain':>8} {'cpu ms':>9} {'x plain':>8} {'target':>7}")
    for tower, res in setting["towers"].items():
        for section in ("train", "forward"):
            for variant, row in res[section].items():
                target = TARGETS.get(variant) if section == "train" else (1.0 if variant == "merged" else None)
                tgt = f"{'<=' if section == 'train' else '~'}{target:.2f}" if target else ""
                print(
                    f"{tower:6} {section:8} {variant:15} {row['wall_median_ms']:9.1f} {row['wall_ratio']:8.3f}"
                    f" {row['cpu_median_ms']:9.1f} {row['cpu_ratio']:8.3f} {tgt:>7}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per variant")
    parser.add_argument("--threads", default="2", help="comma list of torch.set_num_threads values to run")
    parser.add_argument("--towers", default="vit,text", help="comma list of: " + ",".join(TOWERS))
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="batch size (the overhead scales ~ r/tokens)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    towers = args.towers.split(",")
    if unknown := set(towers) - set(TOWERS):
        parser.error(f"unknown towers {sorted(unknown)}; choose from {sorted(TOWERS)}")
    # Earlier runs in the file are kept (appended to), so repeats on a noisy shared machine stay visible.
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(
        {
            "benchmark": "enn_overhead",
            "command": "bench/enn_overhead.py",
            "torch": torch.__version__,
            "device": "cpu",
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "penalty_weight": PENALTY_WEIGHT,
            "targets": {"train_penalty": TARGETS["penalty"], "train_exact": TARGETS["exact"], "forward_merged": 1.0},
        }
    )
    history = results.setdefault("measurements", [])
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        setting = {
            "threads": threads,
            "batch": args.batch,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "runs": args.runs,
            "warmup": args.warmup,
            "loadavg_before": list(os.getloadavg()),
            "towers": {name: bench_tower(name, args.batch, args.runs, args.warmup) for name in towers},
        }
        setting["loadavg_after"] = list(os.getloadavg())
        history.append(setting)
        print_table(setting)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
