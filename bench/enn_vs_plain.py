"""ENN (penalty, exact) against the plain twin: same config, same budget, several seeds; test recall.

Each run is `retrieval train` (the demo config unless --config) followed by `retrieval eval` of its
best.pt on the test split, in fresh processes (`--parallel 2` runs two at a time; give each one thread
with `--threads 1`). Every variant of a seed sees the same data order (seeded by training.seed) and the
same initial function (ENN starts from the SVD of the plain initialisation). Prints a table of mean ± std
over seeds and each variant's difference from the plain twin with 95 % confidence intervals (paired t over
seeds, and Welch's t), and writes the JSON (per-run numbers, load averages) to --out. Finished runs are reused when
the script is started again with the same arguments (from the run folders, or from the runs recorded in --out), so an
interrupted sweep can be continued.

    python bench/enn_vs_plain.py --seeds 0 1 2 3 4 --parallel 2 --threads 1      # the verdict, demo budget
    python bench/enn_vs_plain.py --variants enn-penalty --lambdas 1e-3 1e-1 ...    # a penalty-λ sweep
    python bench/enn_vs_plain.py --seeds 0 1 2 3 4 --variants enn-penalty plain --plain-steps 694 ...  # equal time
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {
    "enn-penalty": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=1"],  # as published: every step
    "enn-exact": ["enn.enabled=true", "enn.ortho=exact"],
    "plain": ["enn.enabled=false"],
    # not run unless named in --variants: the lazy penalty (every 4th step at 4·λ; issue 30's default
    # candidate) and ENN-ℓ on the same ENN-penalty model, one loss per stage (the paper) or per
    # 2-process group (backprop inside each group)
    "enn-penalty-lazy4": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=4"],
    "enn-lazy4-plain-pool": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=4",
                             "enn.exclude=[visual.attnpool]"],
    "local-per-stage": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=1", "training.method=local",
                        "training.local_losses=per_stage"],
    "local-per-group": ["enn.enabled=true", "enn.ortho=penalty", "enn.penalty_every=1", "training.method=local",
                        "training.local_losses=per_group"],
}
DEFAULT_VARIANTS = ["enn-penalty", "enn-exact", "plain"]
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml")
    # paired seeds agree to ±4 RSUM on synth, ±9 on the Fashion benchmark: there 5 resolve ~5 %, 10 resolve 3 % (docs/data.md)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="budget/config override applied to every run (e.g. training.epochs=3)")
    parser.add_argument("--runs", default="runs/enn_vs_plain", help="folder for the run directories")
    parser.add_argument("--out", default="bench/results/enn_vs_plain.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the runs (default: leave the environment as is)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each a training process)")
    parser.add_argument("--lambdas", nargs="+", default=[], metavar="LAMBDA",
                        help="add an enn-penalty variant per penalty weight (enn.lambda), e.g. 1e-3 1e-1")
    parser.add_argument("--plain-steps", type=int, default=None, metavar="N",
                        help="add a plain variant that trains exactly N steps (training.total_steps), the steps that "
                             "fit in ENN's training time: every ENN variant is also compared with it (equal wall clock)")
    parser.add_argument("--vs", nargs="+", default=[], choices=list(VARIANTS), metavar="VARIANT",
                        help="also compare every other variant with these (e.g. enn-penalty: the lazy penalty and "
                             "ENN-ℓ against ENN with backprop)")
    args = parser.parse_args()
    for lam in args.lambdas:
        name = f"enn-penalty-lambda{lam}"
        VARIANTS[name] = [*VARIANTS["enn-penalty"], f"enn.lambda={lam}"]
        args.variants.append(name)
    args.baselines = ["plain", *args.vs]
    if args.plain_steps:
        name = f"plain-{args.plain_steps}steps"
        VARIANTS[name] = [*VARIANTS["plain"], f"training.total_steps={args.plain_steps}"]
        args.variants.append(name)
        args.baselines.append(name)
    return args


def load_average() -> float:
    """1-minute load average (recorded beside every run: wall times mean little without it)."""
    return round(os.getloadavg()[0], 2)


def retrieval(*args: str, env: dict[str, str]) -> str:
    """Run the `retrieval` CLI in a fresh process; its stdout (stderr shown on failure)."""
    result = subprocess.run([sys.executable, "-m", "retrieval", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"retrieval {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def one_run(args: argparse.Namespace, variant: str, seed: int, env: dict[str, str], done: list[dict]) -> dict:
    """Train (or reuse a finished run: its run folder's bench.json, or a run recorded in an earlier --out
    file, `done`), evaluate best.pt on the test split, collect the numbers."""
    run = Path(args.runs) / f"{variant}-seed{seed}"
    result_file = run / "bench.json"
    overrides = [*VARIANTS[variant], f"training.seed={seed}", *args.overrides]
    saved_runs = [json.loads(result_file.read_text())] if result_file.is_file() else []
    for saved in saved_runs + done:
        if saved["config"] == args.config and saved["overrides"] == overrides:
            return saved
    if run.exists():
        import shutil

        shutil.rmtree(run)
    sets = [item for pair in overrides for item in ("--set", pair)]
    load_start = load_average()
    start = time.perf_counter()
    summary = json.loads(retrieval("train", "--config", args.config, "--out", str(run), *sets,
                                   env=env).strip().splitlines()[-1])
    train_wall = time.perf_counter() - start
    retrieval("eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--split", args.split,
              "--json", str(run / "test.json"), env=env)
    test = json.loads((run / "test.json").read_text())["results"]["model"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    result = {
        "variant": variant, "seed": seed, "config": args.config, "overrides": overrides,
        "test": {k: test[k] for k in METRICS}, "best_step": summary["best_step"], "steps": summary["step"],
        "best_val_rsum": summary["best_rsum"], "train_wall_s": round(summary["wall_s"], 1),
        "process_wall_s": round(train_wall, 1), "final_orthogonality_error": last_train["orthogonality_error"],
        "final_train_loss": last_train["loss"], "load_average": [load_start, load_average()],
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarise(runs: list[dict], variants: list[str], baselines: list[str]) -> dict:
    """Mean and (sample) standard deviation over seeds, per variant, and each other variant's difference from
    every baseline (`rsum_minus_<baseline>`: plain at equal steps, at equal time with --plain-steps, and the
    --vs variants); plain variants are not compared with each other."""
    table = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        stats = {}
        for key in (*METRICS, "train_wall_s", "final_orthogonality_error"):
            values = [r["test"][key] if key in METRICS else r[key] for r in mine]
            stats[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        table[variant] = {"seeds": [r["seed"] for r in mine], **stats}
        rsum = {r["seed"]: r["test"]["rsum"] for r in mine}
        for baseline in (b for b in baselines if b != variant and not (variant.startswith("plain") and b.startswith("plain"))):
            plain = {r["seed"]: r["test"]["rsum"] for r in runs if r["variant"] == baseline}
            seeds = [s for s in rsum if s in plain]
            if len(seeds) > 1:
                table[variant][f"rsum_minus_{baseline}"] = difference([rsum[s] for s in seeds],
                                                                      [plain[s] for s in seeds])
    return table


def difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """mean(a) − mean(b) over the same seeds, with 95 % confidence intervals and a verdict.

    Two intervals: Welch's t (the runs as independent samples) and a paired t over seeds, which is the
    sharper test here because a seed fixes both the data order and the initial function for every variant.
    The verdict follows the paired interval: "no measurable difference" when it contains 0.
    """
    from scipy import stats

    welch = stats.ttest_ind(a, b, equal_var=False)
    paired = stats.ttest_rel(a, b)
    w_low, w_high = welch.confidence_interval(level)
    p_low, p_high = paired.confidence_interval(level)
    diff = statistics.mean(a) - statistics.mean(b)
    verdict = "no measurable difference" if p_low <= 0 <= p_high else ("better" if diff > 0 else "worse")
    return {"mean": diff, "ci95": [float(w_low), float(w_high)], "p_value": float(welch.pvalue),
            "paired_ci95": [float(p_low), float(p_high)], "paired_p_value": float(paired.pvalue),
            "verdict": verdict}


def print_table(table: dict) -> None:
    header = f"{'variant':<28}" + "".join(f"{k:>14}" for k in (*METRICS, "wall s", "ortho err"))
    print(header)
    for variant, stats in table.items():
        cells = [f"{stats[k]['mean']:6.1f} ± {stats[k]['std']:4.1f}" for k in (*METRICS, "train_wall_s")]
        cells.append(f"{stats['final_orthogonality_error']['mean']:.1e}")
        print(f"{variant:<28}" + "".join(f"{c:>14}" for c in cells))
    for variant, stats in table.items():
        for key in (k for k in stats if k.startswith("rsum_minus_")):
            d = stats[key]
            print(f"{variant} − {key.removeprefix('rsum_minus_')}: RSUM {d['mean']:+.1f}, 95 % CI paired over seeds "
                  f"[{d['paired_ci95'][0]:+.1f}, {d['paired_ci95'][1]:+.1f}] (p = {d['paired_p_value']:.2f}), "
                  f"Welch [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}] (p = {d['p_value']:.2f}): {d['verdict']}")


def main() -> None:
    args = parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    # Runs recorded in an earlier report count as done (a sweep continued on another machine or session).
    done = json.loads(Path(args.out).read_text()).get("runs", []) if Path(args.out).is_file() else []
    # seed-major: a partial sweep still compares the variants on the same seeds
    jobs = [(variant, seed) for seed in args.seeds for variant in args.variants]

    def run(job: tuple[str, int]) -> dict:
        variant, seed = job
        print(f"[{time.strftime('%H:%M:%S')}] {variant} seed {seed} ... (load {load_average()})", flush=True)
        result = one_run(args, variant, seed, env, done)
        print(f"[{time.strftime('%H:%M:%S')}] {variant} seed {seed}: test RSUM {result['test']['rsum']:.1f}, "
              f"{result['train_wall_s']:.0f} s", flush=True)
        return result

    load_start = load_average()
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        runs = list(pool.map(run, jobs))
    table = summarise(runs, args.variants, args.baselines)
    print_table(table)
    report = {
        "benchmark": "enn_vs_plain", "date": time.strftime("%Y-%m-%d"), "config": args.config,
        "overrides": args.overrides, "split": args.split, "threads": env.get("OMP_NUM_THREADS", "default"),
        "parallel": args.parallel, "load_average": {"start": load_start, "end": load_average()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "summary": table, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
