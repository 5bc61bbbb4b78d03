"""ENN-ℓ (local learning, sequential and pipelined) against backprop: same model, data and cores.

1. speed and e2e (bench/local_speed.py): every way to spend the cores, each in fresh processes: BP at
   --threads and at 1 thread, BP with DDP over --procs processes × 1 thread (torchrun), ENN-ℓ
   sequential at --threads, ENN-ℓ pipelined over --procs processes × 1 thread; `speed` on batches held
   in memory, `e2e` through `retrieval train`. samples/s after warm-up and its ratio to BP at 1 thread,
   BP's best and DDP; per process CPU seconds and peak memory (RSS counts shared library pages in full,
   USS private memory only); for the pipeline where each stage's time went (work, blocked receiving,
   blocked sending), stage balance and the feeding process's share. `--set` picks the ENN-ℓ variant
   (BP ignores the local keys).
2. recall: `retrieval train` for the same number of samples per variant × seed, then `retrieval eval`
   of last.pt on the test split (mean ± std over seeds), and each unit's local-head recall on it
   (`retrieval.train.local_probe`: where information is lost).
The S-device model (per-stage compute + activation transfers) is bench/local_stage_model.py.

    python bench/local_vs_bp.py                          # both parts (hours on 2 cores)
    python bench/local_vs_bp.py --parts speed --set training.local_head=attnpool
    python bench/local_vs_bp.py --parts speed e2e --steps 40 --warmup 5 --repeats 2   # issue 29, idle machine
    python bench/local_vs_bp.py --parts recall --variants bp local local-attnpool-heads
    python bench/local_vs_bp.py --parts recall --config configs/synth-small-vit.yaml \
        --variants local-final-readout local-block-heads      # block heads need a ViT tower

Prints tables and writes bench/results/local_vs_bp.json (finished recall runs are reused on a re-run;
e2e run directories, with each run's stdout/stderr, go to --runs/e2e).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from local_speed import METHODS, measure

# The paper's ENN-ℓ: one local loss per stage (the default is now per_group, the measured best).
PAPER = ["training.method=local", "training.local_losses=per_stage"]
RECALL_VARIANTS = {
    "bp": ["training.method=bp"],
    "local": [*PAPER, "training.local_head=random"],
    "local-learned-heads": [*PAPER, "training.local_head=learned"],
    "local-mlp-heads": [*PAPER, "training.local_head=mlp"],
    "local-2-stages": [*PAPER, "training.local_head=random", "training.stages=2"],
    "local-pipelined": [*PAPER, "training.local_head=random", "training.pipeline=true"],
    # issue 13 (not run unless named in --variants): mechanisms aimed at the gap, one at a time, then together
    "local-final-readout": [*PAPER, "training.local_head=random", "training.local_pool=final"],
    "local-block-heads": [*PAPER, "training.local_head=block"],
    "local-block-heads-final-readout": [*PAPER, "training.local_head=block",
                                        "training.local_pool=final"],
    # 4 stages, 2 losses (one per process of a 2-process pipeline: the default since issue 13). On a model
    # with 4 blocks (or layers) per tower this is local-2-stages up to the float rounding of the grad-norm sum.
    "local-per-group-2-procs": ["training.method=local", "training.local_head=random",
                                "training.local_losses=per_group", "training.pipeline_procs=2"],
    # conv towers (the ResNet demo model): readouts consistent with the final attention pool, AugLocal's
    # next-layer auxiliary net, and cross-depth targets
    "local-attnpool-heads": [*PAPER, "training.local_head=attnpool"],
    "local-auglocal-heads": [*PAPER, "training.local_head=auglocal"],
    "local-attnpool-cross-targets": [*PAPER, "training.local_head=attnpool",
                                     "training.local_targets=cross"],
    "local-cross-targets": [*PAPER, "training.local_head=random", "training.local_targets=cross"],
    # issue 12 §2: backprop with the lazy orthogonality penalty (every 4th step at 4·λ), against `bp`
    "bp-lazy-penalty4": ["training.method=bp", "enn.penalty_every=4"],
}
# Every variant as recorded (the penalty every step, as published) unless it names its own penalty_every.
RECALL_VARIANTS = {name: ["enn.penalty_every=1", *sets] for name, sets in RECALL_VARIANTS.items()}
DEFAULT_VARIANTS = ["bp", "local", "local-per-group-2-procs", "local-learned-heads", "local-mlp-heads", "local-2-stages", "local-pipelined"]
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml")
    parser.add_argument("--parts", nargs="+", default=["speed", "recall"], choices=["speed", "e2e", "recall"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="speed/e2e: which ways of using the cores to time")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (recall budget, e.g. training.epochs=1)")
    parser.add_argument("--threads", type=int, default=2, help="cores: BP/sequential threads")
    parser.add_argument("--procs", type=int, default=2, help="pipelined and DDP: processes (1 thread each)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (speed, e2e)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="speed, e2e: rounds over the methods (interleaved, so load drift hits all alike); "
                        "medians")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(RECALL_VARIANTS),
                        help="recall: which variants to train if not done yet (all finished runs are summarised; "
                        "none given: only summarise)")
    parser.add_argument("--pipelined-seeds", type=int, nargs="+", default=[0],
                        help="seeds for the local-pipelined recall check (same parameters as sequential)")
    parser.add_argument("--runs", default="runs/local_vs_bp")
    parser.add_argument("--out", default="bench/results/local_vs_bp.json")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be ≥ 1 (e2e times from the record at step --warmup)")
    return args


def retrieval(*cli: str) -> str:
    # One thread per process: recall does not depend on speed, the shared cores are used without OpenMP
    # contention, and sequential ENN-ℓ then runs with the pipelined processes' thread count (same bits).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "retrieval", *cli], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"retrieval {' '.join(cli)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def recall_run(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """`retrieval train` + `retrieval eval` (test split, last.pt); reused when already done."""
    run = Path(args.runs) / f"{variant}-seed{seed}"
    done = run / "bench.json"
    if done.is_file():
        return _with_stage_recall(run, json.loads(done.read_text()))
    sets = [*RECALL_VARIANTS[variant], f"training.seed={seed}", "data.val_split=null", *args.overrides]
    if variant == "local-pipelined":
        sets += [f"training.pipeline_procs={args.procs}", "training.pipeline_threads=1"]
    if run.exists():
        import shutil

        shutil.rmtree(run)
    start = time.perf_counter()
    retrieval("train", "--config", args.config, "--out", str(run), *[f"--set={s}" for s in sets])
    train_s = time.perf_counter() - start
    from retrieval.config import load_config

    data = load_config(args.config, args.overrides)["data"]
    retrieval("eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", data["path"],
              "--images", data["images"], "--split", "test", "--json", str(run / "test.json"))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    result = {"variant": variant, "seed": seed, "train_wall_s": train_s, "steps": train[-1]["step"],
              "samples": train[-1]["step"] * load_config(args.config, [*args.overrides, *sets])["training"]["batch_size"],
              "samples_per_s_logged": statistics.median(r["samples_per_s"] for r in train[1:] or train),
              "final_loss": train[-1]["loss"], "test": _test_metrics(run / "test.json")}
    done.write_text(json.dumps(result, indent=1))
    return _with_stage_recall(run, result)


def _with_stage_recall(run: Path, result: dict) -> dict:
    """Add (once, saved in bench.json) each unit's test recall through its local head: where it is lost."""
    if "stages" in result or result["variant"].startswith("bp"):
        return result
    import torch

    from retrieval.train.local_probe import stage_recall

    torch.set_num_threads(1)  # alongside another run: one core each
    result["stages"] = [{m: s[m] for m in METRICS} for s in stage_recall(run / "checkpoints" / "last.pt")]
    (run / "bench.json").write_text(json.dumps(result, indent=1))
    return result


def _test_metrics(path: Path) -> dict:
    row = json.loads(path.read_text())["results"]["model"]  # `retrieval eval --json`
    return {m: float(row[m]) for m in METRICS}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def headline(results: dict) -> dict:
    """The issue's summary: the best ENN-ℓ variant (highest mean test RSUM over ≥ 3 seeds) against BP, and
    the speed part's pipelined throughput and largest stage-process USS against BP's (that part's own
    variant: `speed_variant`)."""
    recall = results["recall"]["summary"]
    full = {v: r for v, r in recall.items() if not v.startswith("bp") and len(r["seeds"]) >= 3}
    out: dict = {"best_variant": None, "rsum_ratio_vs_bp": None, "seeds": []}
    if full and "bp" in recall:
        best = max(full, key=lambda v: full[v]["rsum"][0])
        out.update(best_variant=best, rsum_ratio_vs_bp=full[best]["rsum"][0] / recall["bp"]["rsum"][0],
                   seeds=full[best]["seeds"])
    speed = results.get("speed")
    if speed and "local-pipelined" in speed["methods"] and {"bp", "bp-1thread"} & speed["methods"].keys():
        # BP at its own best thread count on these cores (on this VM 1 thread is sometimes faster than 2)
        bp = max((speed["methods"][m] for m in ("bp", "bp-1thread") if m in speed["methods"]),
                 key=lambda r: r["samples_per_s"])
        pipe = speed["methods"]["local-pipelined"]
        uss = max(v["uss_mb"] for k, v in pipe["peak_private_mb"].items() if k.startswith("stage_proc"))
        out.update(throughput_ratio_vs_bp=pipe["samples_per_s"] / bp["samples_per_s"],
                   uss_ratio_vs_bp=uss / bp["peak_private_mb"]["main"]["uss_mb"], speed_variant=speed["overrides"])
    return out


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                    f"{len(os.sched_getaffinity(0))} cores", "config": args.config, "overrides": args.overrides,
                    "command": " ".join([Path(sys.executable).name, *sys.argv])})
    for part in ("speed", "e2e"):
        if part in args.parts:
            results[part] = measure(args, part)
    if "recall" in args.parts:
        for v in args.variants:
            for s in args.pipelined_seeds if v == "local-pipelined" else args.seeds:
                recall_run(args, v, s)
        runs = [json.loads(p.read_text()) for v in RECALL_VARIANTS
                for s in (args.pipelined_seeds if v == "local-pipelined" else args.seeds)
                if (p := Path(args.runs) / f"{v}-seed{s}" / "bench.json").is_file()]
        if not runs:
            sys.exit(f"no finished recall runs under {args.runs}")
        summary = {}
        for v in RECALL_VARIANTS:
            mine = [r for r in runs if r["variant"] == v]
            if not mine:
                continue
            summary[v] = {m: _mean_std([r["test"][m] for r in mine]) for m in METRICS}
            summary[v]["seeds"] = [r["seed"] for r in mine]
            summary[v]["samples"] = mine[0]["samples"]
            staged = [r["stages"] for r in mine if "stages" in r]
            if staged:  # per unit: mean ± std of the test RSUM through its local head (last: the model's)
                summary[v]["stage_rsum"] = [_mean_std([st[k]["rsum"] for st in staged]) for k in range(len(staged[0]))]
        results["recall"] = {"runs": runs, "summary": summary}
        print(f"\ntest recall after {runs[0]['samples']} samples (mean ± std over seeds)")
        print(f"{'variant':20} {'seeds':>6} " + " ".join(f"{m:>13}" for m in ("i2t_r1", "t2i_r1", "rsum")))
        for v, s in summary.items():
            cells = " ".join(f"{s[m][0]:7.2f} ± {s[m][1]:4.2f}" for m in ("i2t_r1", "t2i_r1", "rsum"))
            print(f"{v:20} {len(s['seeds']):>6} {cells}")
        print("\nper-stage test RSUM (each unit's local head; the last is the model's own)")
        for v, s in summary.items():
            if "stage_rsum" in s:
                print(f"{v:30} " + "  ".join(f"{m:6.1f} ± {d:4.1f}" for m, d in s["stage_rsum"]))
    if "recall" in results:
        results["summary"] = headline(results)
        print(f"\nsummary: {json.dumps(results['summary'])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
