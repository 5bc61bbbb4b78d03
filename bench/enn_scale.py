"""The ENN step overhead against batch size and tower width, and the cost model it follows (issue 30 item 3).

What ENN adds to a step does not depend on the batch: forming W = Q·diag(Λ)·Pᵀ and the factor gradients are
3·out·in·r multiply-adds per layer, the penalty's Gram products (out+in)·r² more, exact mode's retraction
and projected gradients about twice that — all work on the weights, none on the activations. A plain step's
work grows with the batch. So the overhead should fall like 1/batch, and grow with width (Σ out·in·r grows
like width³, a plain step's work like width² per sample). This bench steps the demo model (or any
`--config`) as the trainer does — plain and ENN variants interleaved in one process — for each width
multiplier (vision width, text width and heads ×k: head size kept) and batch, then fits

    ENN ms − plain ms = c · Σ out·in·r + d          (per mode, over every width and batch)
    plain ms          = p_k · batch + q_k           (per width)

and reports, per width and mode, the batch where the modelled overhead falls under `--threshold` (5 %).

Usage: .venv/bin/python bench/enn_scale.py [--batches 64,128,256,512,1024] [--widths 1,2,4] [--threads 1]
       [--modes penalty,exact] [--runs 3] [--warmup 1] [--config configs/synth-small.yaml] [--set KEY=VALUE ...]
(ViT-B/16 for shape: --config configs/coco-vitb16.yaml --set model.pretrained=null --batches 32 --widths 1.)
Prints a table and appends to bench/results/enn_scale.json, load averages beside every point.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import enn_steps as harness  # noqa: E402

import enn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "enn_scale.json"


def width_overrides(cfg: dict[str, Any], k: int) -> list[str]:
    """`--set` pairs multiplying both towers' widths by k (text heads too, so each head keeps its size;
    open_clip's ViT and ModifiedResNet derive their heads from a fixed head width)."""
    if k == 1:
        return []
    vision, text = harness.tower_configs(cfg)
    out = [f"model.vision_cfg.width={int(vision['width']) * k}", f"model.text_cfg.width={int(text['width']) * k}"]
    if "heads" in text:
        out.append(f"model.text_cfg.heads={int(text['heads']) * k}")
    return out


def mnr(model: torch.nn.Module) -> int:
    """Σ over ENN weights of out·in·r: the cost model's unit (the multiply-adds of forming every W once)."""
    return sum(int(torch.Size(w.shape).numel()) * int(w.lam.shape[-1]) for _, w in enn.enn_weights(model))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y = slope·x + intercept (the intercept alone for one x value)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def crossover_batch(extra_ms: float, plain_fit: tuple[float, float], threshold: float) -> float | None:
    """Batch at which extra ÷ plain step falls to `threshold`, with plain ms = p·batch + q; None if plain time
    does not grow with the batch (then no batch gets there)."""
    p, q = plain_fit
    if p <= 0:
        return None
    return max(0.0, (extra_ms / threshold - q) / p)


def cost_model(points: list[dict[str, Any]], modes: Sequence[str], threshold: float, clock: str = "wall") -> dict[str, Any]:
    """Fit the extra-time and plain-time lines over the measured points (`clock`: wall or process CPU time);
    crossover batch per width and mode."""
    key = f"{clock}_ms"
    out: dict[str, Any] = {"threshold": threshold, "clock": clock, "extra": {}, "plain": {}, "crossover_batch": {}}
    widths = sorted({pt["width"] for pt in points})
    for k in widths:
        rows = [pt for pt in points if pt["width"] == k]
        out["plain"][k] = dict(zip(("ms_per_sample", "ms_fixed"),
                                   fit_line([r["batch"] for r in rows], [r["steps"]["plain"][key] for r in rows]),
                                   strict=True))
    for mode in modes:
        xs = [pt["mnr"] for pt in points]
        ys = [pt["steps"][mode][key] - pt["steps"]["plain"][key] for pt in points]
        c, d = fit_line(xs, ys)
        residual = [y - (c * x + d) for x, y in zip(xs, ys, strict=True)]
        out["extra"][mode] = {"ms_per_Gmnr": round(c * 1e9, 3), "ms_fixed": round(d, 2),
                              "rms_residual_ms": round((sum(r * r for r in residual) / len(residual)) ** 0.5, 2)}
        out["crossover_batch"][mode] = {}
        for k in widths:
            x = next(pt["mnr"] for pt in points if pt["width"] == k)
            plain = out["plain"][k]
            b = crossover_batch(c * x + d, (plain["ms_per_sample"], plain["ms_fixed"]), threshold)
            out["crossover_batch"][mode][k] = None if b is None else round(b)
    return out


def measure(config: Path, widths: Sequence[int], batches: Sequence[int], modes: Sequence[str], runs: int,
            warmup: int, extra: Sequence[str]) -> list[dict[str, Any]]:
    """One point per (width, batch): wall/CPU ms of plain and each ENN mode, interleaved, with the load."""
    points = []
    for k in widths:
        base = harness.load_variant_config(config, "plain", extra)
        sets = [*extra, *width_overrides(base, k)]
        cfgs = {v: harness.load_variant_config(config, v, sets) for v in ("plain", *modes)}
        first = harness.random_batch(cfgs["plain"], batches[0])
        steps = {v: harness.TrainerStep(cfg, first) for v, cfg in cfgs.items()}
        size = mnr(steps[modes[0]].model)
        for batch in batches:
            data = harness.random_batch(cfgs["plain"], batch)
            for step in steps.values():
                step.batch = data
            before = harness.load_average()
            points.append({"width": k, "batch": batch, "mnr": size, "loadavg_before": before,
                           "steps": harness.step_ratios(steps, runs, warmup), "loadavg_after": harness.load_average()})
            print_point(points[-1], modes)
    return points


def print_point(pt: dict[str, Any], modes: Sequence[str]) -> None:
    ratios = "  ".join(f"{m} {pt['steps'][m]['wall_ratio']:.3f}x (cpu {pt['steps'][m]['cpu_ratio']:.3f}x)" for m in modes)
    print(f"width x{pt['width']:<2} batch {pt['batch']:5d}  Σmnr {pt['mnr'] / 1e6:8.1f} M  plain "
          f"{pt['steps']['plain']['wall_ms']:9.1f} ms  {ratios}  load {pt['loadavg_before'][0]:.2f}", flush=True)


def print_model(model: dict[str, Any]) -> None:
    print(f"\ncost model ({model['clock']} time): ENN ms − plain ms = c·Σmnr + d; plain ms = p·batch + q (per width); "
          f"crossover = batch where overhead < {100 * model['threshold']:.0f} %")
    for mode, fit in model["extra"].items():
        print(f"  {mode}: c = {fit['ms_per_Gmnr']} ms per G(out·in·r), d = {fit['ms_fixed']} ms, "
              f"rms residual {fit['rms_residual_ms']} ms; crossover batch by width: {model['crossover_batch'][mode]}")
    for k, fit in model["plain"].items():
        print(f"  plain width x{k}: {fit['ms_per_sample']:.3f} ms/sample + {fit['ms_fixed']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=harness.DEMO_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every variant (repeatable)")
    parser.add_argument("--batches", default="64,128,256,512,1024")
    parser.add_argument("--widths", default="1,2,4", help="tower width multipliers")
    parser.add_argument("--modes", default="penalty,exact", help="ENN modes to compare with plain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed steps per variant and point (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.05, help="overhead whose crossover batch is reported")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="times the model is fitted to (cpu: process CPU time, steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - {"penalty", "exact", "penalty_noterm"}:
        parser.error(f"unknown modes {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    widths = [int(k) for k in args.widths.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    started = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "loadavg_before": harness.load_average()}
    points = measure(args.config, widths, batches, modes, args.runs, args.warmup, args.overrides)
    model = cost_model(points, modes, args.threshold, args.clock)
    print_model(model)
    harness.append_result(args.out, "enn_scale", {
        **started, "config": str(args.config), "overrides": args.overrides, "threads": args.threads,
        "runs": args.runs, "warmup": args.warmup, "points": points, "model": model,
        "loadavg_after": harness.load_average()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
