"""ENN-ℓ (local learning, sequential and pipelined) against backprop: same model, data and cores.

1. speed: preprocessed synth batches held in memory (no image decoding in the timed loop), each method
   in a fresh process: BP (one process, --threads threads), ENN-ℓ sequential (the same), ENN-ℓ
   pipelined (--procs processes × 1 thread), and BP with one thread. samples/s over timed steps after
   warm-up; per process, peak RSS (VmHWM, counts shared library pages in full) and sampled peak USS
   (private memory only). `--set` picks the ENN-ℓ variant (BP ignores the local keys).
2. recall: `retrieval train` for the same number of samples per variant × seed, then `retrieval eval`
   of last.pt on the test split (mean ± std over seeds), and each unit's local-head recall on it
   (`retrieval.train.local_probe`: where information is lost).
The S-device model (per-stage compute + activation transfers) is bench/local_stage_model.py.

    python bench/local_vs_bp.py                          # both parts (hours on 2 cores)
    python bench/local_vs_bp.py --parts speed --set training.local_head=attnpool
    python bench/local_vs_bp.py --parts recall --variants bp local local-attnpool-heads
    python bench/local_vs_bp.py --parts recall --config configs/synth-small-vit.yaml \
        --variants local-final-readout local-block-heads      # block heads need a ViT tower

Prints tables and writes bench/results/local_vs_bp.json (finished recall runs are reused on a re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# method -> (config overrides, torch threads: None = --threads)
SPEED_METHODS = {
    "bp": (["training.method=bp"], None),
    "bp-1thread": (["training.method=bp"], 1),
    "local-sequential": (["training.method=local"], None),
    "local-pipelined": (["training.method=local", "training.pipeline=true"], 1),
}
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
DEFAULT_VARIANTS = ["bp", "local", "local-per-group-2-procs", "local-learned-heads", "local-mlp-heads", "local-2-stages", "local-pipelined"]
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synth-small.yaml")
    parser.add_argument("--parts", nargs="+", default=["speed", "recall"], choices=["speed", "recall"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (recall budget, e.g. training.epochs=1)")
    parser.add_argument("--threads", type=int, default=2, help="cores: BP/sequential threads")
    parser.add_argument("--procs", type=int, default=2, help="pipelined: processes (1 thread each)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (speed)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="speed: rounds over the methods (interleaved, so load drift hits all alike); medians")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(RECALL_VARIANTS),
                        help="recall: which variants to train if not done yet (all finished runs are summarised; "
                        "none given: only summarise)")
    parser.add_argument("--pipelined-seeds", type=int, nargs="+", default=[0],
                        help="seeds for the local-pipelined recall check (same parameters as sequential)")
    parser.add_argument("--runs", default="runs/local_vs_bp")
    parser.add_argument("--out", default="bench/results/local_vs_bp.json")
    parser.add_argument("--worker", choices=["speed"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    return parser.parse_args()


# -- worker side (a fresh process per measurement) -------------------------------------------------------

def _status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _private_kb(pid: int | str) -> tuple[int, int]:
    """(USS, PSS) in kB: memory only this process holds, and its share of pages it shares with others.
    RSS counts the ~520 MB of torch's shared-library pages in full in every process; USS does not."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split()[:2]
        fields[name.rstrip(":")] = int(value)
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


class PeakSampler(threading.Thread):
    """Polls USS/PSS of some processes every `interval` s and keeps each one's maximum: the kernel
    records a peak only for RSS (VmHWM). Peaks shorter than the interval can be missed."""

    def __init__(self, pids: dict[str, int | str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peak = {name: (0, 0) for name in pids}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for name, pid in self.pids.items():
                uss, pss = _private_kb(pid)
                old = self.peak[name]
                self.peak[name] = (max(old[0], uss), max(old[1], pss))

    def finish(self) -> dict[str, dict[str, float]]:
        self._done.set()
        self.join()
        return {name: {"uss_mb": u / 1024, "pss_mb": p / 1024} for name, (u, p) in self.peak.items()}


def _setup(args: argparse.Namespace, method_overrides: list[str], threads: int):
    """Config, towers and in-memory batches; returns also the RSS after imports (the baseline)."""
    import torch

    from retrieval.config import load_config
    from retrieval.model import build_towers
    from retrieval.train.data import build_train_data
    from retrieval.train.distributed import DistEnv
    from retrieval.train.session import seed_everything
    from retrieval.train.step import set_temperature

    torch.set_num_threads(threads)
    baseline_kb = _status_kb("self", "VmRSS")
    baseline_uss_kb = _private_kb("self")[0]
    cfg = load_config(args.config, [*args.overrides, *method_overrides, "data.workers=0",
                                    f"training.pipeline_procs={args.procs}", "training.pipeline_threads=1"])
    seed_everything(int(cfg["training"]["seed"]))
    towers = build_towers(cfg)
    set_temperature(towers.model, float(cfg["training"]["init_temperature"]))
    env = DistEnv.single()
    data = build_train_data(cfg, towers, env)
    batches = []
    for micro in data.batches(0):
        batches.append(micro)
        if len(batches) == 4:
            break
    return cfg, towers, env, batches, baseline_kb, baseline_uss_kb


def speed_worker(args: argparse.Namespace) -> dict:
    """Time `args.method` for warm-up + timed steps; peak RSS of every process involved."""
    from retrieval.train.local_pipeline import PipelinedRunner, SequentialRunner
    from retrieval.train.local_units import build_units
    from retrieval.train.optim import build_optimizer, build_scheduler
    from retrieval.train.step import build_loss, train_step

    pipelined = args.method == "local-pipelined"
    overrides, threads = SPEED_METHODS[args.method]
    cfg, towers, env, batches, baseline_kb, baseline_uss_kb = _setup(args, overrides, threads or args.threads)
    model, total = towers.model, args.warmup + args.steps
    if args.method.startswith("bp"):
        optimizer = build_optimizer(model, cfg["training"])
        scheduler, loss_fn = build_scheduler(optimizer, cfg["training"], total), build_loss(env)

        class _Bp:
            mode = "bp"
            pids: list[int] = []

            def submit(self, step, micro):
                train_step(model, model, micro, loss_fn, optimizer, scheduler, cfg, env)

            def wait(self, step):
                return None
        runner, close = _Bp(), (lambda: None)
    else:
        units = build_units(cfg, model, env.device, total)
        runner = (PipelinedRunner(cfg, towers.model_cfg, units, total, env.device) if pipelined
                  else SequentialRunner(units))
        runner.__enter__()
        close = lambda: runner.__exit__(None, None, None)  # noqa: E731
    children = runner.pipe.pids if pipelined else []
    sampler = PeakSampler({"main": "self", **{f"stage_proc_{i}": pid for i, pid in enumerate(children)}})
    sampler.start()
    for step in range(1, args.warmup + 1):
        runner.submit(step, batches[step % len(batches)])
    runner.wait(args.warmup)
    start = time.perf_counter()
    for step in range(args.warmup + 1, total + 1):
        runner.submit(step, batches[step % len(batches)])
    runner.wait(total)
    elapsed = time.perf_counter() - start
    private = sampler.finish()
    rss = {"main": _status_kb("self", "VmHWM")}
    rss.update({f"stage_proc_{i}": _status_kb(pid, "VmHWM") for i, pid in enumerate(children)})
    close()
    batch = int(cfg["training"]["batch_size"])
    return {"samples_per_s": args.steps * batch / elapsed, "step_s": elapsed / args.steps,
            "peak_rss_mb": {k: v / 1024 for k, v in rss.items()}, "baseline_rss_mb": baseline_kb / 1024,
            "peak_private_mb": private, "baseline_uss_mb": baseline_uss_kb / 1024}


def run_worker(args: argparse.Namespace, kind: str, method: str = "") -> dict:
    """Run one measurement in a fresh interpreter (clean peak-RSS accounting, own thread settings)."""
    cmd = [sys.executable, __file__, "--worker", kind, "--method", method, "--config", args.config,
           "--threads", str(args.threads), "--procs", str(args.procs), "--warmup", str(args.warmup),
           "--steps", str(args.steps), *[f"--set={o}" for o in args.overrides]]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{kind} {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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


def _median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its memory numbers come with it), plus the spread."""
    ordered = sorted(runs, key=lambda r: r["samples_per_s"])
    return {**ordered[len(ordered) // 2], "samples_per_s_all": [r["samples_per_s"] for r in runs]}


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
    if speed:
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
    if args.worker:
        print(json.dumps(speed_worker(args)))
        return
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                    f"{len(os.sched_getaffinity(0))} cores", "config": args.config, "overrides": args.overrides,
                    "command": " ".join([Path(sys.executable).name, *sys.argv])})
    if "speed" in args.parts:
        load = os.getloadavg()[0]
        rounds = [{m: run_worker(args, "speed", m) for m in SPEED_METHODS} for _ in range(args.repeats)]
        speed = {m: _median_run([r[m] for r in rounds]) for m in SPEED_METHODS}
        results["speed"] = {"overrides": args.overrides, "load_before": load, "load_after": os.getloadavg()[0], "threads": args.threads,
                            "procs": args.procs, "timed_steps": args.steps, "repeats": args.repeats,
                            "methods": speed, "rounds": rounds}
        bp = speed["bp"]
        print(f"\nspeed (load {load:.1f} → {os.getloadavg()[0]:.1f}; {args.steps} timed steps)")
        print(f"{'method':18} {'samples/s':>9} {'× BP':>6}  peak RSS / peak USS (MB) per process; × BP")
        bp_rss, bp_uss = bp["peak_rss_mb"]["main"], bp["peak_private_mb"]["main"]["uss_mb"]
        for m, r in speed.items():
            mem = ", ".join(f"{k} {v:.0f} ({v / bp_rss:.2f}×) / {r['peak_private_mb'][k]['uss_mb']:.0f} "
                            f"({r['peak_private_mb'][k]['uss_mb'] / bp_uss:.2f}×)" for k, v in r["peak_rss_mb"].items())
            print(f"{m:18} {r['samples_per_s']:9.1f} {r['samples_per_s'] / bp['samples_per_s']:6.2f}  {mem}")
        print(f"(a process that only imported torch/open_clip/retrieval: {bp['baseline_rss_mb']:.0f} MB RSS, "
              f"{bp['baseline_uss_mb']:.0f} MB USS)")
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
