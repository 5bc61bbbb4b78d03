"""ENN-ℓ on S devices, modelled from measurements: per-stage compute and activation-transfer times.

For each S in --stages, the model is cut into S units (one per device); each unit's train_step is timed
(CPU time of this single-threaded process, median over the timed steps; robust to other processes on
the cores) and the bytes it hands on are counted (image and text outputs + token ids: ENN-ℓ sends
nothing backwards). BP's step is timed the same way. With one unit per device and no overlap of compute
and transfer, a pipelined step takes max_k(compute_k + bytes_k / bandwidth); the modelled speed-up is
BP's step on one device over that. CPU times stand in for one device's; on GPUs the ratios, not the
seconds, are what carries over (and small stages there are launch-bound: see docs/results.md).

    python bench/local_stage_model.py                                   # the demo model, S = 2, 4
    python bench/local_stage_model.py --config configs/synth-small-vit.yaml --stages 2 4 8 \
        --set model.vision_cfg.layers=8 --set model.text_cfg.layers=8 --out bench/results/local_stage_model_vit8.json

Prints a table and writes bench/results/local_stage_model.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Link bandwidths the model is evaluated at (bytes/s): what a user with GPUs would have between stages.
BANDWIDTHS = {"nvlink_300GBps": 300e9, "pcie4_x16_25GBps": 25e9, "10gbe_1.25GBps": 1.25e9}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="bench/results/local_stage_model.json")
    return parser.parse_args()


def _nbytes(micro) -> int:
    return sum(t.numel() * t.element_size() for m in micro for t in m)


def measure(args: argparse.Namespace, stages: int) -> dict:
    """Per-unit CPU seconds and bytes handed on per step for `stages` units, and BP's step."""

    from retrieval.config import load_config
    from retrieval.model import build_towers
    from retrieval.train.data import build_train_data
    from retrieval.train.distributed import DistEnv
    from retrieval.train.local_units import build_units
    from retrieval.train.optim import build_optimizer, build_scheduler
    from retrieval.train.session import seed_everything
    from retrieval.train.step import build_loss, train_step

    cfg = load_config(args.config, [*args.overrides, "training.method=local", f"training.stages={stages}",
                                    "training.local_losses=per_stage", "data.workers=0"])
    seed_everything(int(cfg["training"]["seed"]))
    towers = build_towers(cfg)
    env = DistEnv.single()
    data = build_train_data(cfg, towers, env)
    batches = [b for b, _ in zip(data.batches(0), range(4), strict=False)]
    total = args.warmup + args.steps
    bp_model = copy.deepcopy(towers.model)
    units = build_units(cfg, towers.model, env.device, total)
    seconds: list[list[float]] = [[] for _ in units]
    sent = [0] * len(units)
    for step in range(total):
        micro = [(img, tok, tok) for img, tok in batches[step % len(batches)]]
        for k, unit in enumerate(units):
            t0 = time.process_time()
            micro, _ = unit.train_step(micro)
            seconds[k].append(time.process_time() - t0)
            sent[k] = _nbytes(micro) if k < len(units) - 1 else 0
    optimizer = build_optimizer(bp_model, cfg["training"])
    scheduler, loss_fn = build_scheduler(optimizer, cfg["training"], total), build_loss(env)
    bp = []
    for step in range(total):
        t0 = time.process_time()
        train_step(bp_model, bp_model, batches[step % len(batches)], loss_fn, optimizer, scheduler, cfg, env)
        bp.append(time.process_time() - t0)
    compute = [statistics.median(s[args.warmup:]) for s in seconds]
    bp_step = statistics.median(bp[args.warmup:])
    modelled = {}
    for link, bandwidth in BANDWIDTHS.items():
        step = max(c + b / bandwidth for c, b in zip(compute, sent, strict=True))
        modelled[link] = {"step_s": step, "speedup_vs_bp": bp_step / step}
    return {"stages": stages, "unit_compute_s": compute, "unit_sent_bytes": sent, "bp_step_s": bp_step,
            "local_sequential_vs_bp": bp_step / sum(compute), "balance": min(compute) / max(compute),
            "modelled": modelled}


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(1)
    rows = {}
    for s in args.stages:
        try:
            rows[str(s)] = measure(args, s)
        except Exception as err:  # a tower that cannot be cut into s stages: recorded, not fatal
            rows[str(s)] = {"stages": s, "error": str(err).splitlines()[0]}
    print(f"{'S':>2} {'unit compute (ms)':>28} {'sent/step (MB)':>20} {'BP ms':>6} "
          + " ".join(f"{k:>18}" for k in BANDWIDTHS))
    for s, r in rows.items():
        if "error" in r:
            print(f"{s:>2} not possible: {r['error']}")
            continue
        compute = "/".join(f"{c * 1000:.0f}" for c in r["unit_compute_s"])
        sent = "/".join(f"{b / 1e6:.1f}" for b in r["unit_sent_bytes"][:-1])
        print(f"{s:>2} {compute:>28} {sent:>20} {r['bp_step_s'] * 1000:6.0f} "
              + " ".join(f"{r['modelled'][k]['speedup_vs_bp']:17.2f}×" for k in BANDWIDTHS))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{len(os.sched_getaffinity(0))} cores", "load_before": os.getloadavg()[0],
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "config": args.config,
              "overrides": args.overrides, "timed_steps": args.steps, "bandwidths_bytes_per_s": BANDWIDTHS,
              "by_stages": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
