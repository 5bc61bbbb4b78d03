"""The demo recipe search: each variant of the demo config trained and evaluated on the synth test split.

Variants live in configs/bench/demo-recipe.yaml (a base config plus `--set` overrides each). A run is
`retrieval train` then `retrieval eval` of best.pt on the test split, in fresh processes; its test RSUM,
training seconds (the trainer's wall time, validations included), steps and samples/s are recorded with the
load average. `--plain-twin` adds each variant's identical plain (non-ENN) twin. `--demo NAME` times the
whole `retrieval demo --no-serve` on a fresh work directory with that variant's config and writes the
`summary` of the chosen recipe. Screening runs may share the cores (`--parallel 2 --threads 1`): recall
does not depend on the thread count, but their seconds do, so only runs made alone on an idle machine
(`--threads 2`) say what the demo costs.

    python bench/demo_recipe.py --variants vit-baseline rn16 --parallel 2 --threads 1   # screening
    python bench/demo_recipe.py --variants rn16-twins --plain-twin --threads 2            # a finalist, alone
    python bench/demo_recipe.py --demo rn16-twins                                        # the summary
    python bench/demo_recipe.py --plot docs/demo_recipe.png                              # RSUM vs minutes

Finished runs are reused (same variant, seed, overrides and threads), so the file grows over sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from enn_vs_plain import load_average, retrieval

VARIANTS_FILE = Path("configs/bench/demo-recipe.yaml")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=[], help=f"variant names from {VARIANTS_FILE}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--plain-twin", action="store_true", help="also run each variant with enn.enabled=false")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (and training.threads) per run")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--demo", metavar="NAME", help="time `retrieval demo --no-serve` with this variant")
    parser.add_argument("--plot", metavar="PNG", help="plot test RSUM against training minutes")
    parser.add_argument("--runs", default="runs/demo_recipe")
    parser.add_argument("--out", default="bench/results/demo_recipe.json")
    return parser.parse_args()


def variant_config(name: str, plain: bool = False) -> tuple[str, list[str]]:
    """(base config path, overrides) of a variant; `plain` adds the plain twin's override."""
    variants = yaml.safe_load(VARIANTS_FILE.read_text())["variants"]
    if name not in variants:
        sys.exit(f"unknown variant {name!r}; {VARIANTS_FILE} has: {', '.join(variants)}")
    spec = variants[name]
    return spec["config"], [*spec.get("set", []), *(["enn.enabled=false"] if plain else [])]


def one_run(args: argparse.Namespace, name: str, plain: bool, seed: int, done: list[dict]) -> dict:
    """Train and evaluate one variant (or reuse its finished run), returning its record."""
    config, overrides = variant_config(name, plain)
    overrides = [*overrides, f"training.seed={seed}", f"training.threads={args.threads}"]
    label = f"{name}-plain" if plain else name
    for saved in done:
        if saved["variant"] == label and saved["config"] == config and saved["overrides"] == overrides:
            return saved
    run = Path(args.runs) / f"{label}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    sets = [item for pair in overrides for item in ("--set", pair)]
    load_start = load_average()
    summary = json.loads(retrieval("train", "--config", config, "--out", str(run), *sets, env=env)
                         .strip().splitlines()[-1])
    retrieval("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--split", "test",
              "--json", str(run / "test.json"), env=env)
    test = json.loads((run / "test.json").read_text())["results"]["model"]
    trains = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["samples_per_s"] for r in trains if r["kind"] == "train"]
    return {
        "variant": label, "seed": seed, "config": config, "overrides": overrides, "threads": args.threads,
        "parallel": args.parallel, "test": {k: round(test[k], 2) for k in METRICS},
        "steps": summary["step"], "best_step": summary["best_step"], "train_s": round(summary["wall_s"], 1),
        "samples_per_s_median": sorted(speeds)[len(speeds) // 2], "load_average": [load_start, load_average()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def time_demo(args: argparse.Namespace, name: str) -> dict:
    """The whole `retrieval demo --no-serve` on a fresh work directory with the variant's resolved config."""
    from retrieval.config import load_config, save_config

    config, overrides = variant_config(name)
    work = Path(tempfile.mkdtemp(prefix="demo-recipe-"))
    resolved = work / "recipe.yaml"
    save_config(load_config(config, overrides), resolved)
    load_start = load_average()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retrieval", "demo", "--config", str(resolved), "--workdir",
                    str(work), "--no-serve"], check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    total = time.perf_counter() - start
    test = json.loads((work / "runs" / "demo" / "eval-test.json").read_text())["results"]["model"]
    train = [json.loads(line) for line in (work / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(work)
    return {"variant": name, "demo_total_s": round(total, 1), "test_rsum": round(test["rsum"], 2),
            "train_s": round(max(r.get("wall_s", 0.0) for r in train), 1),
            "load_average": [load_start, load_average()], "date": time.strftime("%Y-%m-%d %H:%M")}


def plot(runs: list[dict], demos: list[dict], path: str) -> None:
    """Synth test RSUM against training minutes: one point per run (alone / shared marked apart) and per timed demo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        if run["variant"].startswith("fashion"):
            continue  # another dataset: its RSUM is not on this scale
        alone = run["parallel"] == 1
        ax.scatter(run["train_s"] / 60, run["test"]["rsum"], marker="o" if alone else "x",
                   color="tab:blue" if alone else "tab:grey")
        ax.annotate(run["variant"], (run["train_s"] / 60, run["test"]["rsum"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 2))
    for demo in demos:
        ax.scatter(demo["train_s"] / 60, demo["test_rsum"], marker="*", s=120, color="tab:green")
        ax.annotate(f"{demo['variant']} in the demo ({demo['demo_total_s'] / 60:.1f} min in all)",
                    (demo["train_s"] / 60, demo["test_rsum"]), fontsize=7, textcoords="offset points", xytext=(4, -10))
    ax.axhline(300, color="tab:red", linestyle="--", linewidth=1, label="goal: test RSUM 300")
    ax.set(xlabel="training minutes (o: alone, 2 threads; x: two at a time, 1 thread; *: inside a timed demo)",
           ylabel="test RSUM (synth)", title="Demo recipe variants")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(runs: list[dict]) -> None:
    print(f"{'variant':<28}{'seed':>5}{'thr':>4}{'par':>4}{'steps':>6}{'train s':>9}{'smp/s':>7}"
          + "".join(f"{k:>8}" for k in METRICS) + f"{'load':>12}")
    for r in runs:
        print(f"{r['variant']:<28}{r['seed']:>5}{r['threads']:>4}{r['parallel']:>4}{r['steps']:>6}"
              f"{r['train_s']:>9.0f}{r['samples_per_s_median']:>7.0f}"
              + "".join(f"{r['test'][k]:>8.1f}" for k in METRICS)
              + f"{r['load_average'][0]:>6.2f}-{r['load_average'][1]:.2f}")


def save_runs(out: Path, new: list[dict]) -> dict:
    """Merge `new` runs into the report at `out` (re-read first: another lane may have written) and save it."""
    report = json.loads(out.read_text()) if out.is_file() else {"benchmark": "demo_recipe", "runs": []}
    report["runs"] = [r for r in report["runs"] if r not in new] + new
    report.update(date=time.strftime("%Y-%m-%d"), machine={"cpus": os.cpu_count(), "platform": platform.platform()})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    done = json.loads(out.read_text())["runs"] if out.is_file() else []
    jobs = [(name, plain, seed) for seed in args.seeds for name in args.variants
            for plain in ([False, True] if args.plain_twin else [False])]

    def run(job: tuple[str, bool, int]) -> dict:
        name, plain, seed = job
        print(f"[{time.strftime('%H:%M:%S')}] {name}{' (plain)' if plain else ''} seed {seed} (load {load_average()})",
              flush=True)
        result = one_run(args, name, plain, seed, done)
        save_runs(out, [result])  # each run as it ends: an interrupted sweep keeps what it finished
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        list(pool.map(run, jobs))
    report = save_runs(out, [])
    runs = report["runs"]
    print_table(runs)
    if args.demo:
        demo = time_demo(args, args.demo)
        report = save_runs(out, [])
        report.setdefault("demos", []).append(demo)
        twins = [r for r in report["runs"] if r["variant"] == f"{args.demo}-plain"]  # recall: any thread count
        report["summary"] = {
            "variant": args.demo, "test_rsum": demo["test_rsum"],
            "plain_twin_test_rsum": twins[-1]["test"]["rsum"] if twins else None,
            "train_s": demo["train_s"], "demo_total_s": demo["demo_total_s"], "load_average": demo["load_average"],
        }
        print(json.dumps(report["summary"]))
    if args.plot:
        plot(report["runs"], report.get("demos", []), args.plot)
        print(f"wrote {args.plot}")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
