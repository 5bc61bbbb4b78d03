"""`retrieval train`: contrastive training of ENN towers (bp or ENN-ℓ), one process or under torchrun."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

from retrieval.config import load_config
from retrieval.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval train` argument parser."""
    parser = argparse.ArgumentParser(
        prog="retrieval train",
        description="Train image and text towers contrastively into RUN_DIR (config.yaml, checkpoints/"
        "{last,best}.pt, metrics.jsonl, curves.png). Several processes: "
        "torchrun --nproc_per_node N -m retrieval train ...",
    )
    parser.add_argument("--config", help="run config YAML (configs/*.yaml); with --resume, defaults to "
                        "RUN_DIR/config.yaml")
    parser.add_argument("--out", required=True, help="run directory RUN_DIR")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from RUN_DIR/checkpoints/last.pt")
    return parser


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """--config (or, resuming, the run's own config.yaml) ← --set overrides, validated."""
    config = args.config
    if config is None:
        if not args.resume:
            raise UserError("--config is required (e.g. --config configs/synth-small.yaml)")
        config = Path(args.out) / "config.yaml"
        if not config.is_file():
            raise UserError(f"--resume without --config: {config} not found")
    return load_config(config, args.overrides)


def trainer(method: str):
    """The training function for `training.method`: bp here, local from `retrieval.train.local` (lazily)."""
    if method == "bp":
        from retrieval.train.loop import train_bp

        return train_bp
    try:
        module = importlib.import_module("retrieval.train.local")
    except ModuleNotFoundError as err:
        if err.name != "retrieval.train.local":
            raise
        raise UserError("training.method=local (ENN-ℓ) is not available in this installation "
                        "(retrieval.train.local is missing)") from None
    return module.train_local


def main(argv: list[str]) -> int:
    """Entry point of `retrieval train`; rank 0 prints a one-line summary and the summary as JSON."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    summary = trainer(cfg["training"]["method"])(cfg, args.out, args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # other torchrun ranks stay quiet
        return 0
    line = f"{args.out}: {summary['step']} steps in {summary['wall_s']:.0f} s"
    val = summary.get("val") or {}
    if val:
        line += (f"; best val RSUM {summary['best_rsum']:.1f} at step {summary['best_step']}"
                 f"; last val R@1 i2t {val['i2t_r1']:.1f} t2i {val['t2i_r1']:.1f}")
    else:
        line += "; no validation split: best.pt is the last checkpoint"
    print(line)
    print(json.dumps({k: v for k, v in summary.items() if k != "val"}, default=str))
    return 0
