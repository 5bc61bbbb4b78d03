"""Where a training step's time goes: our trainer's step beside open_clip's, part by part, in one process.

bench/trainer_vs_open_clip.py measures whole trainers (data loader, logging and all) and found ours slower;
this bench splits the work to say where. In one process, on one real synth batch (open_clip's train
augmentation, images decoded from their files), variants run round-robin so they share the machine's state:

- `open_clip`: the plain model stepped as open_clip_train's `train_one_epoch` steps it (zero_grad, forward,
  open_clip's ClipLoss, backward, clip_grad_norm_ when configured, AdamW with its gain/bias grouping, clamp);
- `plain`, `enn-penalty`, `enn-exact`: our `train_step`'s work, timed part by part (ENN weights formed once
  per step under `parametrize.cached()`, as the trainer does, here in a part of their own), and our real
  `train_step` timed whole beside it, so the parts can be checked against what the trainer runs.

Parts: materialise (ENN weights formed), image forward, text forward, loss, penalty, backward, clip
(gradient norm), optimizer (AdamW step, exact mode's retraction included), rest (zero_grad, schedule, clamp).
Also the data path's CPU time per batch (0 workers: what one data worker spends), ours and open_clip's
CsvDataset on the same pairs, and (`--ops`) each variant's heaviest operators from torch.profiler.

Usage: .venv/bin/python bench/trainer_profile.py [--steps 10] [--warmup 3] [--threads 1] [--ops]
Prints a table and writes bench/results/trainer_profile.json (--out to change).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_vs_open_clip import CAPTION_KEY, IMG_KEY, VARIANTS, our_overrides, training_pairs, write_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "trainer_profile.json"
PARTS = ("materialise", "image_fwd", "text_fwd", "loss", "penalty", "backward", "clip", "optimizer", "rest")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "synth-small.yaml"))
    parser.add_argument("--data", default=str(ROOT / "data" / "synth" / "dataset.json"))
    parser.add_argument("--images", default=str(ROOT / "data" / "synth" / "images"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--data-batches", type=int, default=5, help="batches timed per data path")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ops", action="store_true", help="also profile one step per variant (top operators)")
    parser.add_argument("--out", default=str(RESULTS))
    return parser.parse_args(argv)


class Timer:
    """Wall time of consecutive parts of one step (CPU: every op has finished when it returns)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.times[part] = self.times.get(part, 0.0) + now - self._last
        self._last = now


def open_clip_optimizer(model: Any, train_cfg: dict[str, Any]) -> Any:
    """AdamW grouped as open_clip_train.main groups it: no decay on 1-d weights, biases, norms, logit_scale."""
    import torch

    def no_decay(name: str, p: Any) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": float(train_cfg["weight_decay"])}]
    return torch.optim.AdamW(groups, lr=float(train_cfg["lr"]), betas=tuple(float(b) for b in train_cfg["betas"]),
                             eps=float(train_cfg["eps"]))


class Variant:
    """One model with its optimizer, schedule and loss, stepped part by part (`timed_step`) or whole."""

    def __init__(self, name: str, cfg: dict[str, Any], total_steps: int, env: Any) -> None:
        import open_clip
        import torch

        from retrieval.model import build_towers
        from retrieval.train.optim import build_optimizer, build_scheduler
        from retrieval.train.step import build_loss, penalty_weight

        self.name, self.cfg = name, cfg
        torch.manual_seed(int(cfg["training"]["seed"]))  # every variant starts from the same plain weights
        self.towers = build_towers(cfg)
        self.model = self.towers.model.train()
        self.env = env
        if name == "open_clip":
            self.optimizer = open_clip_optimizer(self.model, cfg["training"])
            self.scheduler = None
            self.loss_fn = open_clip.loss.ClipLoss()
            self.lam = 0.0
        else:
            self.optimizer = build_optimizer(self.model, cfg["training"])
            self.scheduler = build_scheduler(self.optimizer, cfg["training"], total_steps)
            self.loss_fn = build_loss(self.env, cfg["training"]["loss"])
            self.lam = penalty_weight(cfg["enn"])

    def timed_step(self, images: Any, tokens: Any) -> dict[str, float]:
        import torch
        from torch.nn.utils import parametrize

        import enn
        from retrieval.train.step import clamp_logit_scale

        model, clip = self.model, float(self.cfg["training"]["grad_clip"])
        timer = Timer()
        if self.name == "open_clip":
            self.optimizer.zero_grad()
        cached = contextlib.nullcontext() if self.name == "open_clip" else parametrize.cached()
        with cached:
            for module in model.modules():  # each ENN weight formed once, here rather than inside the forward
                if parametrize.is_parametrized(module):
                    for tensor_name in module.parametrizations:
                        getattr(module, tensor_name)
            timer.mark("materialise")
            image = model.encode_image(images, normalize=True)
            timer.mark("image_fwd")
            text = model.encode_text(tokens, normalize=True)
            timer.mark("text_fwd")
            loss = self.loss_fn(image, text, model.logit_scale.exp())
            timer.mark("loss")
            penalty = enn.orthogonality_loss(model) if self.lam else loss.new_zeros(())
            timer.mark("penalty")
            (loss + self.lam * penalty).backward()
            timer.mark("backward")
        float(loss.detach())
        params = [p for p in model.parameters() if p.grad is not None]
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        elif self.name != "open_clip":
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        timer.mark("clip")
        self.optimizer.step()
        timer.mark("optimizer")
        if self.name == "open_clip":
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            clamp_logit_scale(model, float(self.cfg["training"]["max_logit_scale"]))
        timer.mark("rest")
        return timer.times

    def whole_step(self, images: Any, tokens: Any) -> float:
        """Our real `train_step` (the open_clip variant: its parts, which are its whole step)."""
        from retrieval.train.step import train_step

        start = time.perf_counter()
        if self.name == "open_clip":
            self.timed_step(images, tokens)
        else:
            train_step(self.model, self.model, [(images, tokens)], self.loss_fn, self.optimizer, self.scheduler,
                       self.cfg, self.env)
        return time.perf_counter() - start


def top_ops(step: Callable[[], Any], count: int = 12) -> list[dict[str, Any]]:
    """The operators with the most self CPU time in one call of `step`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count} for e in rows]


def data_ms_per_batch(loader: Any, batches: int) -> float:
    """Median wall time of one batch from `loader` (0 workers: the batch is made in this process)."""
    times, iterator = [], iter(loader)
    next(iterator)  # first batch: file-system caches, lazy imports
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def data_paths(ours: Any, towers: Any, pairs: Path, batch: int, batches: int) -> dict[str, float]:
    """ms of CPU per batch for our training loader `ours` and open_clip's CsvDataset, on the same pairs
    (with `towers`' train transform and tokenizer)."""
    from open_clip_train.data import CsvDataset
    from torch.utils.data import DataLoader

    theirs = DataLoader(CsvDataset(str(pairs), towers.preprocess_train, IMG_KEY, CAPTION_KEY, "\t", towers.tokenizer),
                        batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    return {"ours": data_ms_per_batch(ours, batches), "open_clip": data_ms_per_batch(theirs, batches)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from retrieval.config import load_config

    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    batch = args.batch_size or int(base["training"]["batch_size"])
    work = Path(tempfile.mkdtemp(prefix="trainer-profile-"))
    pairs_file = work / "pairs.tsv"
    dataset = json.loads(Path(args.data).read_text())
    count = batch * (args.data_batches + 1)
    write_pairs(training_pairs(dataset, Path(args.images), count, int(base["training"]["seed"])), pairs_file)
    configs = {v: load_config(args.config, our_overrides(v if v != "open_clip" else "plain", pairs_file,
                                                         Path(args.images), batch, 0, args.threads, "fp32", "cpu", 1))
               for v in args.variants}
    any_cfg = next(iter(configs.values()))
    from retrieval.model import build_towers
    from retrieval.train.data import build_train_data
    from retrieval.train.distributed import DistEnv

    load_before = os.getloadavg()[0]
    env = DistEnv.single()
    towers = build_towers(any_cfg, convert=False)
    ours = build_train_data(any_cfg, towers, env).loader
    data_ms = data_paths(ours, towers, pairs_file, batch, args.data_batches)
    images, tokens = next(iter(ours))  # a fresh pass: the same first batch
    total = args.warmup + 2 * args.steps
    variants = {v: Variant(v, configs[v], total + 10, env) for v in args.variants}
    parts: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    whole: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.warmup + args.steps):  # round-robin: every variant sees the same machine state
        for name, variant in variants.items():
            times = variant.timed_step(images, tokens)
            seconds = variant.whole_step(images, tokens)
            if i >= args.warmup:
                parts[name].append(times)
                whole[name].append(seconds)
    ops = {name: top_ops(lambda v=variant: v.timed_step(images, tokens)) for name, variant in variants.items()} \
        if args.ops else {}
    rows = {}
    for name in variants:
        medians = {p: 1e3 * statistics.median(t.get(p, 0.0) for t in parts[name]) for p in PARTS}
        rows[name] = {"parts_ms": {p: round(m, 2) for p, m in medians.items()},
                      "sum_of_parts_ms": round(sum(medians.values()), 1),
                      "whole_step_ms": round(1e3 * statistics.median(whole[name]), 1)}
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": round(load_before, 2),
                    "load_after": round(os.getloadavg()[0], 2)},
        "command": "python bench/trainer_profile.py " + " ".join(sys.argv[1:]),
        "config": args.config, "batch": batch, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
        "data_ms_per_batch": {k: round(v, 1) for k, v in data_ms.items()},
        "variants": rows, "top_ops": ops,
    }


def print_table(result: dict[str, Any]) -> None:
    rows = result["variants"]
    print(f"batch {result['batch']}, {result['threads']} thread(s), median of {result['steps']} steps, ms "
          f"(load {result['machine']['load_before']} → {result['machine']['load_after']})")
    print(f"{'part':<12}" + "".join(f"{v:>13}" for v in rows))
    for part in (*PARTS, "sum_of_parts_ms", "whole_step_ms"):
        values = [r["parts_ms"][part] if part in PARTS else r[part] for r in rows.values()]
        print(f"{part.removesuffix('_ms'):<12}" + "".join(f"{x:>13.1f}" for x in values))
    print("data per batch (0 workers), ms: " + ", ".join(f"{k} {v}" for k, v in result["data_ms_per_batch"].items()))
    for name, ops in result["top_ops"].items():
        print(f"\n{name}: top operators by self CPU ms")
        for op in ops:
            print(f"  {op['op']:<48}{op['self_ms']:>10.1f}{op['calls']:>7}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
