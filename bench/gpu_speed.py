"""GPU speed of the flickr30k-vitb16 architecture (ViT-B/16 + 12-layer text, ENN on): the figures of issue 16.

vitb16     training steps (retrieval's own `train_step`: AdamW, clipping, penalty, bf16 autocast on CUDA) on
           synthetic random batches for plain / ENN-penalty / ENN-exact towers: samples/s, peak GPU memory,
           step-time ratios against plain; then inference (both towers, no grad) plain vs merged vs unmerged.
enn_local  ENN-ℓ sequential units on one device against a BP step on the same batch, for S = 2, 4, 8
           stages: each unit's step time, and what that implies when each unit has a GPU of its own.

Each phase's step count shrinks to fit --budget seconds, and the JSON is rewritten after every phase, so
a time box that ends the process early still leaves every finished figure. bench/gpu_check.py runs both;
alone (repository root, `python -m` so that `bench` imports):

    python -m bench.gpu_speed vitb16 --device cuda --out vitb16.json
    python -m bench.gpu_speed enn_local --device cpu --tiny --out enn_local.json   # a seconds-long dry run
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import enn
from bench.enn_overhead import time_interleaved
from retrieval.config import load_config
from retrieval.device import autocast
from retrieval.model import build_towers, open_clip_model_cfg
from retrieval.train.distributed import DistEnv
from retrieval.train.local_units import build_units
from retrieval.train.optim import build_optimizer, build_scheduler
from retrieval.train.step import build_loss, set_temperature, train_step

CONFIG = "configs/flickr30k-vitb16.yaml"
# A CPU-sized stand-in with as many blocks as the largest stage count, for --tiny.
TINY_MODEL = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 16, patch_size: 8, width: 16, layers: 8, head_width: 8}",
    "model.text_cfg={context_length: 8, vocab_size: 1000, width: 16, heads: 2, layers: 8}",
]
VARIANTS = {  # towers trained in the vitb16 measurement, in this order
    "plain": ["enn.enabled=false"],
    "penalty": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=1"],  # as published
    "exact": ["enn.enabled=true", "enn.ortho=exact"],
}
GOALS = {"penalty_vs_plain": 1.10, "exact_vs_plain": 1.30}  # issue 16: step-time ratio at most this
STAGES = (2, 4, 8)
Batch = tuple[torch.Tensor, torch.Tensor]


class Budget:
    """Seconds left for the whole measurement, shared out among the phases still to run."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def steps(self, wanted: int, step_s: float, phases_left: int, minimum: int = 5) -> int:
        """Timed steps for the next phase: `wanted`, or fewer so that every phase left fits (at least `minimum`)."""
        share = (self.deadline - time.perf_counter()) / max(phases_left, 1)
        return min(wanted, max(minimum, int(share / max(step_s, 1e-6))))


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    """`fn` followed by a device synchronisation, so wall-clock timing covers the queued GPU work."""

    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def memory_mark(device: torch.device) -> int:
    """Start a peak-memory window; returns the bytes allocated now (what the window's peak is measured from)."""
    if device.type != "cuda":
        return 0
    gc.collect()  # the previous phase's model and optimizer state, so they are not counted in this window
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device: torch.device, mark: int) -> float | None:
    """Peak GPU memory allocated since `memory_mark` returned `mark`, in GiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - mark) / 2**30, 3)


def build_model(cfg: dict[str, Any], device: torch.device) -> nn.Module:
    """The configured towers on `device`, ENN-converted there (the SVDs of a ViT-B run far faster on a GPU)."""
    model = build_towers(cfg, convert=False).model.to(device)
    if cfg["enn"]["enabled"]:
        enn.convert(model, ortho=cfg["enn"]["ortho"], exclude=tuple(cfg["enn"]["exclude"]))
    set_temperature(model, float(cfg["training"]["init_temperature"]))
    return model


def random_batch(cfg: dict[str, Any], batch: int, device: torch.device) -> Batch:
    """Random images and token ids of the configured shapes: speed does not depend on the pixels."""
    model_cfg = open_clip_model_cfg(cfg["model"])  # model.name's config with the run config's overrides
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    g = torch.Generator(device=device).manual_seed(0)
    size = int(vision["image_size"])
    images = torch.randn(batch, 3, size, size, device=device, generator=g)
    tokens = torch.randint(1, int(text["vocab_size"]), (batch, int(text["context_length"])), device=device, generator=g)
    return images, tokens


def bp_step(cfg: dict[str, Any], model: nn.Module, batch: Batch, env: DistEnv) -> Callable[[], None]:
    """One backprop training step of the real trainer (`retrieval.train.step.train_step`) on `batch`."""
    optimizer = build_optimizer(model, cfg["training"])
    scheduler = build_scheduler(optimizer, cfg["training"], 1_000_000)
    loss_fn = build_loss(env)
    return lambda: train_step(model, model, [batch], loss_fn, optimizer, scheduler, cfg, env)


def time_steps(fn: Callable[[], None], warmup: int, wanted: int, budget: Budget, phases_left: int) -> list[float]:
    """Warm up, then time as many calls as fit the budget; returns the seconds of each timed call."""
    for _ in range(max(warmup - 1, 0)):
        fn()
    start = time.perf_counter()
    fn()
    runs = budget.steps(wanted, time.perf_counter() - start, phases_left)
    return time_interleaved({"fn": fn}, runs, warmup=0)["fn"]["wall"]


def millis(seconds: float) -> float:
    """Seconds → milliseconds, rounded for the JSON."""
    return round(1e3 * seconds, 3)


def measure_vitb16(args: argparse.Namespace, device: torch.device, write: Callable[[dict], None]) -> None:
    """Training-step speed and memory of plain / penalty / exact towers, then merged-inference speed."""
    env = DistEnv.single(device)
    budget = Budget(args.budget)
    result: dict[str, Any] = {"train": {}, "goals": GOALS}
    plain: nn.Module | None = None
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        cfg = load_config(CONFIG, [*args.model, *overrides, f"training.batch_size={args.batch}"])
        mark = memory_mark(device)
        start = time.perf_counter()
        model = build_model(cfg, device)
        batch = random_batch(cfg, args.batch, device)
        build_s = time.perf_counter() - start
        phases_left = len(VARIANTS) - i + 1  # the variants left and the inference comparison
        step = synced(bp_step(cfg, model, batch, env), device)
        times = time_steps(step, args.warmup, args.steps, budget, phases_left)
        del step  # frees the optimizer state
        model.zero_grad(set_to_none=True)
        step_s = statistics.median(times)
        result["train"][name] = {
            "step_ms_median": millis(step_s), "step_ms_min": millis(min(times)), "timed_steps": len(times),
            "samples_per_s": round(args.batch / step_s, 1), "peak_gib": peak_gib(device, mark),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "build_s": round(build_s, 1),
        }
        if name != "plain":
            result[f"{name}_vs_plain"] = round(step_s / (result["train"]["plain"]["step_ms_median"] / 1e3), 3)
        if name == "plain":
            plain = model  # kept for the inference comparison with the trained ENN-penalty towers
        elif name == "penalty":
            result["inference"] = measure_inference(args, device, cfg, plain, model)
            result["merged_vs_plain"] = result["inference"]["merged"]["ratio_vs_plain"]
            plain = None
        write(result)
        del model, batch


def measure_inference(
    args: argparse.Namespace, device: torch.device, cfg: dict[str, Any], plain: nn.Module, converted: nn.Module
) -> dict[str, Any]:
    """Both towers' eval forward (no grad, the training precision): plain, merged ENN, unmerged ENN, interleaved."""
    models = {"plain": plain, "merged": enn.merge(copy.deepcopy(converted)), "enn": converted}
    images, tokens = random_batch(cfg, args.batch, device)
    precision = str(cfg["training"]["precision"])

    def forward(model: nn.Module) -> Callable[[], None]:
        model.eval()

        def run() -> None:
            with torch.no_grad(), autocast(device, precision):
                model(images, tokens)

        return synced(run, device)

    times = time_interleaved({name: forward(m) for name, m in models.items()}, args.infer_runs, args.warmup)
    medians = {name: statistics.median(t["wall"]) for name, t in times.items()}
    return {
        name: {"ms_median": millis(s), "images_per_s": round(args.batch / s, 1),
               "ratio_vs_plain": round(s / medians["plain"], 3)}
        for name, s in medians.items()
    }


def unit_times(units: list, batch: Batch, device: torch.device) -> tuple[list[float], list[float]]:
    """One ENN-ℓ step through every unit in turn: each unit's seconds, and the MB it hands to the next one."""
    images, tokens = batch
    micro = [(images, tokens, tokens)]
    seconds, handed_mb = [], []
    for unit in units:
        start = time.perf_counter()
        micro, _ = unit.train_step(micro)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        handed_mb.append(sum(t.numel() * t.element_size() for t in micro[0][:2]) / 2**20)
    return seconds, handed_mb


def measure_enn_local(args: argparse.Namespace, device: torch.device, write: Callable[[dict], None]) -> None:
    """BP step vs ENN-ℓ units (same model, same batch) for each stage count, and the S-GPU model."""
    env = DistEnv.single(device)
    budget = Budget(args.budget)
    # one unit per stage: the S-device model times each stage on its own device
    cfg = load_config(CONFIG, [*args.model, "training.method=local", "training.local_losses=per_stage",
                               f"training.batch_size={args.batch}"])
    model = build_model(cfg, device)
    batch = random_batch(cfg, args.batch, device)
    bp_s = statistics.median(
        time_steps(synced(bp_step(cfg, model, batch, env), device), args.warmup, args.steps, budget, len(STAGES) + 1)
    )
    model.zero_grad(set_to_none=True)
    result: dict[str, Any] = {"bp_step_ms": millis(bp_s), "bp_samples_per_s": round(args.batch / bp_s, 1), "stages": {}}
    write(result)
    for i, stages in enumerate(STAGES):
        cfg["training"]["stages"] = stages
        units = build_units(cfg, model, device, 1_000_000)
        for _ in range(args.warmup):
            unit_times(units, batch, device)
        first, handed = unit_times(units, batch, device)
        rows = [first] + [unit_times(units, batch, device)[0]
                          for _ in range(budget.steps(args.steps, sum(first), len(STAGES) - i) - 1)]
        per_unit = [statistics.median(col) for col in zip(*rows, strict=True)]
        slowest = max(per_unit)
        result["stages"][str(stages)] = {
            "unit_ms": [millis(s) for s in per_unit],
            "sequential_step_ms": millis(sum(per_unit)),
            "sequential_vs_bp": round(sum(per_unit) / bp_s, 3),  # same samples on one GPU: > 1 is slower
            "timed_steps": len(rows),
            "handed_mb": [round(mb, 3) for mb in handed[:-1]],  # activations sent to the next stage's GPU per step
            # One unit per GPU, transfers between GPUs not counted: a step takes as long as the slowest unit.
            "pipelined_step_ms": millis(slowest),
            "speedup_vs_bp_1gpu": round(bp_s / slowest, 3),
            "vs_ideal_ddp": round((bp_s / stages) / slowest, 3),  # > 1: beats BP data-parallel on as many GPUs
        }
        write(result)
        del units


def main(argv: list[str] | None = None) -> None:
    """Run one measurement (command line as in the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurement", choices=("vitb16", "enn_local"))
    parser.add_argument("--out", type=Path, required=True, help="JSON file (rewritten after every phase)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, batch 8, 3 steps: a CPU dry run")
    parser.add_argument("--batch", type=int, help="default 256 (8 with --tiny)")
    parser.add_argument("--steps", type=int, help="timed steps per phase at most (default 100 / 20; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; 1 with --tiny)")
    parser.add_argument("--infer-runs", type=int, help="timed inference passes per model (default 30; 3 with --tiny)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for all phases together")
    args = parser.parse_args(argv)
    args.model = [*(TINY_MODEL if args.tiny else []), "model.pretrained=null"]  # speed needs no weights (offline)
    args.batch = args.batch or (8 if args.tiny else 256)
    args.steps = args.steps or (3 if args.tiny else 100 if args.measurement == "vitb16" else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.infer_runs = args.infer_runs or (3 if args.tiny else 30)
    device = torch.device(args.device)
    torch.manual_seed(0)
    header = {
        "measurement": args.measurement, "config": CONFIG, "tiny": args.tiny, "batch": args.batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    def write(result: dict) -> None:
        args.out.write_text(json.dumps({**header, **result}, indent=1) + "\n")

    (measure_vitb16 if args.measurement == "vitb16" else measure_enn_local)(args, device, write)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
