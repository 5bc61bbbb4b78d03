"""Whole training steps of the demo model as the trainer runs them, for ENN-vs-plain step-time benches.

bench/enn_profile.py (where an ENN step's extra time goes) and bench/enn_scale.py (the overhead against
batch and width) both need the same thing: the model a run config builds (open_clip towers, `enn.convert`
when `enn.enabled`, channels-last image tower when configured), the trainer's optimizer (fused AdamW, exact
mode retracted after each step) and the trainer's own `train_step` on one fixed random batch, so the only
difference between variants is what the config says. Variants are stepped round-robin in one process
(`time_interleaved`), so a shared machine's load hits them alike; ratios are what these benches report.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from enn_overhead import time_interleaved  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "synth-small.yaml"
# The variants every ENN step bench compares, as `--set` overrides of the demo config.
VARIANTS: dict[str, list[str]] = {
    "plain": ["enn.enabled=false"],
    "penalty": ["enn.ortho=penalty", "enn.penalty_every=1"],  # as published: every step
    "penalty_noterm": ["enn.ortho=penalty", "enn.penalty_every=1", "enn.lambda=0"],  # the parametrisation without the penalty term
    "exact": ["enn.ortho=exact"],
}


def load_variant_config(config: Path, variant: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The run config of one variant: `config` ← the variant's overrides ← `extra` (e.g. a width)."""
    from retrieval.config import load_config

    return load_config(config, [*VARIANTS[variant], *extra])


def tower_configs(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """open_clip's vision_cfg and text_cfg as the model will be built (a `model.name`'s config + overrides)."""
    from retrieval.model import open_clip_model_cfg

    resolved = open_clip_model_cfg(cfg["model"])
    return resolved["vision_cfg"], resolved["text_cfg"]


def random_batch(cfg: dict[str, Any], batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and token ids of the config's shapes (the step's cost does not depend on their values)."""
    vision, text = tower_configs(cfg)
    gen = torch.Generator().manual_seed(seed)
    size = int(vision.get("image_size", 224))
    images = torch.randn(batch, 3, size, size, generator=gen)
    tokens = torch.randint(1, int(text.get("vocab_size", 49408)), (batch, int(text.get("context_length", 77))),
                           generator=gen)
    return images, tokens


class TrainerStep:
    """One variant's model, optimizer and schedule, and a closure running the trainer's `train_step` on a batch."""

    def __init__(self, cfg: dict[str, Any], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        from retrieval.model import build_towers
        from retrieval.train.distributed import DistEnv
        from retrieval.train.optim import build_optimizer, build_scheduler
        from retrieval.train.step import build_loss

        torch.manual_seed(int(cfg["training"]["seed"]))  # every variant starts from the same plain weights
        self.cfg = cfg
        self.model = build_towers(cfg).model.train()
        if cfg["training"]["channels_last"]:
            self.model.visual.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg["training"])
        self.scheduler = build_scheduler(self.optimizer, cfg["training"], total_steps=10**6)
        self.env = DistEnv.single()
        self.loss_fn = build_loss(self.env, cfg["training"]["loss"])
        self.batch = batch
        self.steps = 0

    def __call__(self) -> None:
        from retrieval.train.step import train_step

        train_step(self.model, self.model, [self.batch], self.loss_fn, self.optimizer, self.scheduler, self.cfg,
                   self.env, step=self.steps)
        self.steps += 1


def step_ratios(steps: dict[str, Callable[[], None]], runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median wall/CPU ms per step of each variant, interleaved, and its ratio to "plain" (measured alongside)."""
    times = time_interleaved(steps, runs, warmup)
    base = {clock: statistics.median(times["plain"][clock]) for clock in ("wall", "cpu")}
    out = {}
    for name, clocks in times.items():
        row: dict[str, float] = {}
        for clock, ts in clocks.items():
            med = statistics.median(ts)
            row[f"{clock}_ms"] = round(1e3 * med, 2)
            row[f"{clock}_ratio"] = round(med / base[clock], 4)
        out[name] = row
    return out


def load_average() -> list[float]:
    """1/5/15-minute load averages, rounded: recorded beside every timing (the machine may be shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def append_result(path: Path, benchmark: str, measurement: dict[str, Any]) -> None:
    """Add one measurement to a bench's JSON file; earlier ones are kept, so repeats on a shared machine stay
    visible beside each other."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update({"benchmark": benchmark, "command": f"bench/{benchmark}.py", "torch": torch.__version__,
                    "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()})
    results.setdefault("measurements", []).append(measurement)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
