"""Where an ENN training step's extra time goes, per layer kind, on the shipped demo model (issue 30 item 1).

An ENN step does what the plain step does (the host layers run on the formed weight W, and the backward
gives dW as it would for a plain weight) plus: forming W = Q·diag(Λ)·Pᵀ (one out·in·r product per layer), the
factor gradients from dW (two more), the penalty's Gram products (‖QᵀQ−I‖² + ‖PᵀP−I‖², forward and
backward), exact mode's retraction, and AdamW on three tensors instead of one. Each part is timed here on
every ENN weight of the model, alone (median of `--reps` calls), and summed per layer kind: conv, linear,
attention in-projections (nn.MultiheadAttention's packed q/k/v; open_clip's AttentionPool2d q/k/v_proj) and
out-projections (out_proj; the pool's c_proj). Beside it, whole trainer steps of plain, ENN-penalty,
ENN-penalty without the term and ENN-exact, interleaved in this process, so the parts can be checked against
the real difference (what is left is "unattributed": Python and parametrize overhead, gradient clipping over
more tensors, memory-format conversions). The tokens each layer sees per batch are listed against its rank:
applying the factors in sequence (x·P·Λ·Qᵀ) instead of forming W only saves work where tokens < r.

Usage: .venv/bin/python bench/enn_profile.py [--threads 1,2] [--batch 128] [--runs 5] [--reps 7]
Prints tables and appends to bench/results/enn_profile.json (load averages recorded beside every figure).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from enn_steps import (  # noqa: E402
    DEMO_CONFIG,
    VARIANTS,
    TrainerStep,
    append_result,
    load_average,
    load_variant_config,
    random_batch,
    step_ratios,
)

import enn  # noqa: E402
from enn.orthogonality import gram_penalty  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "enn_profile.json"
KINDS = ("conv", "linear", "attn_in", "attn_out")
PARTS = ("form", "factor_grads", "penalty", "retraction", "optimizer")


def layer_kind(model: nn.Module, name: str) -> str:
    """conv | linear | attn_in | attn_out for the ENN tensor `name` (``<module path>.<tensor>``)."""
    path, tensor = name.rsplit(".", 1)
    host = model.get_submodule(path)
    if isinstance(host, nn.Conv2d):
        return "conv"
    if isinstance(host, nn.MultiheadAttention):
        return "attn_in"  # in_proj_weight or q/k/v_proj_weight
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.MultiheadAttention) or "Attention" in type(parent).__name__:
        return "attn_in" if leaf in ("q_proj", "k_proj", "v_proj") else "attn_out"
    return "linear"


def tokens_per_batch(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, int]:
    """Rows each ENN weight multiplies in one forward: N·H·W output positions of a conv, tokens of a linear.

    open_clip's AttentionPool2d passes its q/k/v/c projections' weights to the attention functional without
    calling the modules, so those take the pool's own tokens: N·(H·W + 1) (the mean token is prepended).
    """
    seen: dict[str, int] = {}
    hooks = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)) \
                and "AttentionPool" not in type(module).__name__:
            continue

        def hook(mod: nn.Module, args: tuple, out: Any, path: str = path) -> None:
            x = args[0]
            if isinstance(mod, nn.Conv2d):
                seen[path] = out.shape[0] * out.shape[-2] * out.shape[-1]
            elif isinstance(mod, nn.Linear):
                seen[path] = x.numel() // mod.in_features
            elif isinstance(mod, nn.MultiheadAttention):
                seen[path] = x.numel() // mod.embed_dim
            elif "AttentionPool" in type(mod).__name__:
                seen[path] = x.shape[0] * (x.shape[-2] * x.shape[-1] + 1)
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(images, tokens)
    for h in hooks:
        h.remove()
    out = {}
    for name, _ in enn.enn_weights(model):
        path = name.rsplit(".", 1)[0]
        out[name] = seen.get(path, seen.get(path.rpartition(".")[0], 0))
    return out


def median_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median process CPU time of `fn` over `reps` calls, after one untimed call.

    CPU time, not wall time: on a shared machine it moves far less with other processes' load, and it is
    compared with the whole steps' CPU times (all threads summed in both)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def weight_parts(w: enn.EnnWeight, reps: int) -> dict[str, float]:
    """Seconds of each ENN-only part for one weight, alone: forming W, the factor gradients from a dW, the
    penalty term's forward and backward (penalty mode) and the retraction (exact mode)."""
    grad_w = torch.randn(w.shape)

    def factor_grads() -> None:
        w().backward(grad_w)

    form = median_seconds(lambda: w(), reps)
    parts = {"form": form, "factor_grads": max(0.0, median_seconds(factor_grads, reps) - form)}
    if w.ortho == "penalty":
        parts["penalty"] = median_seconds(lambda: (gram_penalty(w.Q) + gram_penalty(w.P)).backward(), reps)
    if w.ortho == "exact":
        parts["retraction"] = median_seconds(w.retract, reps)
    for p in w.parameters():
        p.grad = None
    return parts


def optimizer_extra(weights: list[tuple[str, enn.EnnWeight]], reps: int) -> float:
    """Seconds a fused AdamW step spends on these weights' factors beyond what it spends on plain weights."""
    def step_time(shapes: list[tuple[int, ...]]) -> float:
        params = [nn.Parameter(torch.randn(s)) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        return median_seconds(opt.step, reps)

    factors = [tuple(p.shape) for _, w in weights for p in w.parameters()]
    plain = [w.shape for _, w in weights]
    return step_time(factors) - step_time(plain)


def profile_parts(model: nn.Module, tokens: dict[str, int], reps: int) -> dict[str, dict[str, Any]]:
    """Per layer kind: layer count, Σ out·in·r, and ms of each part (summed over the kind's weights)."""
    by_kind: dict[str, list[tuple[str, enn.EnnWeight]]] = defaultdict(list)
    for name, w in enn.enn_weights(model):
        by_kind[layer_kind(model, name)].append((name, w))
    out = {}
    for kind in KINDS:
        weights = by_kind.get(kind, [])
        if not weights:
            continue
        sums: dict[str, float] = defaultdict(float)
        for _, w in weights:
            for part, seconds in weight_parts(w, reps).items():
                sums[part] += seconds
        sums["optimizer"] = optimizer_extra(weights, reps)
        row: dict[str, Any] = {"layers": len(weights), "mnr_M": round(sum(_mnr(w) for _, w in weights) / 1e6, 2),
                               "gram_M": round(sum(_gram_work(w) for _, w in weights) / 1e6, 2)}
        row.update({f"{part}_ms": round(1e3 * sums[part], 2) for part in PARTS if part in sums})
        row["total_ms"] = round(1e3 * sum(sums.values()), 2)
        row["sequential_candidates"] = [n for n, w in weights if tokens[n] < _rank(w)]
        out[kind] = row
    return out


def _rank(w: enn.EnnWeight) -> int:
    return w.lam.shape[-1]


def _mnr(w: enn.EnnWeight) -> int:
    """out·in·r multiply-adds of forming W (all blocks): the unit of the cost model."""
    return int(torch.Size(w.shape).numel()) * _rank(w)


def _gram_work(w: enn.EnnWeight) -> int:
    """(out + in)·r² multiply-adds: one Gram product of Q and one of P (all blocks)."""
    out = w.shape[0]
    return (out + int(torch.Size(w.shape).numel()) // out) * _rank(w) ** 2


def run_setting(config: Path, threads: int, batch: int, runs: int, warmup: int, reps: int) -> dict[str, Any]:
    """One thread count: whole-step ratios and the per-kind parts of both ENN modes."""
    torch.set_num_threads(threads)
    cfgs = {v: load_variant_config(config, v) for v in VARIANTS}
    images, tokens = random_batch(cfgs["plain"], batch)
    steps = {v: TrainerStep(cfg, (images, tokens)) for v, cfg in cfgs.items()}
    setting: dict[str, Any] = {"threads": threads, "batch": batch, "runs": runs, "reps": reps,
                               "date": datetime.datetime.now().isoformat(timespec="seconds"),
                               "loadavg_before": load_average()}
    setting["steps"] = step_ratios(steps, runs, warmup)
    setting["loadavg_after_steps"] = load_average()
    rows = tokens_per_batch(steps["penalty"].model, images, tokens)
    setting["layers"] = {n: {"shape": list(w.shape), "blocks": w.blocks, "rank": _rank(w), "tokens": rows[n]}
                         for n, w in enn.enn_weights(steps["penalty"].model)}
    setting["parts"] = {mode: profile_parts(steps[mode].model, rows, reps) for mode in ("penalty", "exact")}
    setting["loadavg_after"] = load_average()
    return setting


def print_setting(s: dict[str, Any]) -> None:
    """Whole-step table, then per-kind parts as ms and as % of the plain step."""
    plain_ms = s["steps"]["plain"]["cpu_ms"]
    print(f"\nthreads={s['threads']} batch={s['batch']}  load 1/5/15 before {s['loadavg_before']}, "
          f"after steps {s['loadavg_after_steps']}")
    print(f"{'variant':16} {'wall ms':>9} {'x plain':>8} {'cpu ms':>9} {'x plain':>8}")
    for name, row in s["steps"].items():
        print(f"{name:16} {row['wall_ms']:9.1f} {row['wall_ratio']:8.3f} {row['cpu_ms']:9.1f} {row['cpu_ratio']:8.3f}")
    for mode, kinds in s["parts"].items():
        diff = s["steps"][mode]["cpu_ms"] - plain_ms
        print(f"\n{mode}: parts timed alone, CPU ms per step (% of the plain step's {plain_ms:.0f} CPU ms)")
        print(f"{'kind':9} {'layers':>6} {'Σmnr M':>8} {'Σgram M':>8} " + " ".join(f"{p:>14}" for p in PARTS) + f" {'total':>14}")
        total = 0.0
        for kind, row in kinds.items():
            cells = [f"{row.get(f'{p}_ms', 0.0):6.1f} ({100 * row.get(f'{p}_ms', 0.0) / plain_ms:4.1f}%)" for p in PARTS]
            print(f"{kind:9} {row['layers']:6d} {row['mnr_M']:8.1f} {row['gram_M']:8.1f} " + " ".join(f"{c:>14}" for c in cells)
                  + f" {row['total_ms']:7.1f} ({100 * row['total_ms'] / plain_ms:4.1f}%)")
            total += row["total_ms"]
        print(f"sum of parts {total:.1f} ms; measured step difference (CPU) {diff:.1f} ms; unattributed {diff - total:.1f} ms")
    candidates = [n for kinds in s["parts"].values() for row in kinds.values() for n in row["sequential_candidates"]]
    print(f"layers with tokens per batch < rank (factors in sequence would save work): {sorted(set(candidates)) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's training.batch_size")
    parser.add_argument("--runs", type=int, default=5, help="timed whole steps per variant (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed whole steps per variant first")
    parser.add_argument("--reps", type=int, default=7, help="timed calls per part and weight (median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    batch = args.batch or int(load_variant_config(args.config, "plain")["training"]["batch_size"])
    for threads in (int(t) for t in args.threads.split(",")):
        setting = run_setting(args.config, threads, batch, args.runs, args.warmup, args.reps)
        print_setting(setting)
        append_result(args.out, "enn_profile", {"config": str(args.config), **setting})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
