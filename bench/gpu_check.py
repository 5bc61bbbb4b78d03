"""Issue 16's GPU check: five time-boxed steps on one GPU, one JSON (scripts/gpu_check.sh runs it in one call).

  tests        pytest tests/enn (the CUDA tests among them) + any other test file that needs CUDA
  vitb16       bench.gpu_speed vitb16: ViT-B/16 + 12-layer text, plain vs ENN-penalty vs ENN-exact, batch 256
  train_eval   retrieval data synth (20k images) → retrieval train (1 epoch, training.device=DEVICE) → eval
  embed_index  retrieval embed of the synth images (images/s) → retrieval index build → retrieval eval --index
  enn_local    bench.gpu_speed enn_local: ENN-ℓ units against BP, modelled for S = 2, 4, 8 GPUs

Every command runs under `timeout` (its process group is killed at the step's limit), so a hang or a CUDA
error in one step leaves the others to run; steps share --budget seconds, each keeping the minimum the
later ones need. OUT/gpu_check.json is rewritten after every step ({"steps": {name: {"status": ok | failed
| timeout | skipped, "seconds", "figures", "error"?}}, ...}); OUT/gpu_check.log holds every command's output.

    python -m bench.gpu_check --out OUT                  # on the GPU machine (scripts/gpu_check.sh)
    python -m bench.gpu_check --dry-run --out /tmp/gc    # CPU, tiny model and data: every path in ~2 minutes
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "open_clip_torch", "timm", "faiss-cpu", "numpy", "pytest")


class StepError(Exception):
    """A step's command failed (`status` failed) or ran out of time (`status` timeout)."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Check:
    """Where and how the steps run: device, tiny (dry-run) sizes, work folder, log, and the step's deadline."""

    device: str
    tiny: bool
    work: Path
    log: TextIO
    deadline: float = 0.0

    @property
    def synth(self) -> Path:
        """The folder of the synth dataset that train_eval makes (dataset.json, images/)."""
        return self.work / "synth"

    @property
    def dataset(self) -> list[str]:
        """The --data/--images options naming that dataset."""
        return ["--data", str(self.synth / "dataset.json"), "--images", str(self.synth / "images")]

    @property
    def run_dir(self) -> Path:
        """The run folder train_eval trains into (embed_index embeds with its best.pt)."""
        return self.work / "run"

    def run(self, *argv: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
        """Run a command under `timeout` until the step's deadline; returns (exit code, output), logged."""
        left = int(self.deadline - time.monotonic())
        if left < 2:
            raise StepError(f"no time left for: {' '.join(argv)}", "timeout")
        self.log.write(f"\n$ {' '.join(argv)}   (limit {left} s)\n")
        self.log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        start = time.monotonic()
        proc = subprocess.run(["timeout", "-k", "10", str(left), *argv], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.log.write(proc.stdout + f"[exit {proc.returncode} after {time.monotonic() - start:.1f} s]\n")
        self.log.flush()
        if proc.returncode in (124, 137):
            raise StepError(f"timed out after {left} s: {' '.join(argv[:4])} ...", "timeout")
        if proc.returncode not in ok_codes:
            raise StepError(f"{' '.join(argv[:4])} ... exited {proc.returncode}: ...{proc.stdout[-1500:]}")
        return proc.returncode, proc.stdout

    def python(self, *argv: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
        """`run` with this interpreter (the device's python3, or the venv's in a dry run)."""
        return self.run(sys.executable, *argv, ok_codes=ok_codes)

    def timed(self, figures: dict[str, Any], key: str, *argv: str) -> None:
        """`python` that records its wall seconds as `figures[key]`."""
        start = time.monotonic()
        self.python(*argv)
        figures[key] = round(time.monotonic() - start, 2)


def step_tests(c: Check, figures: dict[str, Any]) -> None:
    """pytest tests/enn and every other test file that asks for CUDA; a CUDA test skipped on a GPU is a failure."""
    if c.tiny:  # the CUDA tests alone (they skip on CPU): proves the invocation and the report parsing
        files = ["tests/enn/test_enn_cuda.py"]
    else:
        others = [p for p in sorted((ROOT / "tests").rglob("test_*.py"))
                  if "cuda.is_available" in p.read_text() and "enn" not in p.relative_to(ROOT / "tests").parts]
        files = ["tests/enn", *(str(p.relative_to(ROOT)) for p in others)]
    junit = c.work / "tests.xml"
    parallel = ["-n", "4"] if not c.tiny and importlib.util.find_spec("xdist") else []
    code, _ = c.python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", f"--junitxml={junit}",
                       *parallel, *files, ok_codes=(0, 1))
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    counts = {kind: sum(o == kind for o in outcomes.values()) for kind in ("passed", "failure", "error", "skipped")}
    cuda = {name: o for name, o in outcomes.items() if "cuda" in name.lower()}
    figures.update(files=files, counts=counts, cuda_tests=cuda,
                   not_passed={name: o for name, o in outcomes.items() if o != "passed"})
    if code:
        raise StepError(f"pytest: {counts}")
    if c.device.startswith("cuda") and "skipped" in cuda.values():
        raise StepError("CUDA tests were skipped on a CUDA device")


def speed_step(measurement: str) -> Callable[[Check, dict[str, Any]], None]:
    """A step running `python -m bench.gpu_speed MEASUREMENT`; its JSON (partial after a time-out) is the figures."""

    def step(c: Check, figures: dict[str, Any]) -> None:
        out = c.work / f"{measurement}.json"
        budget = max(10, int(c.deadline - time.monotonic()) - 30)  # room for imports and the model build
        try:
            c.python("-m", "bench.gpu_speed", measurement, "--device", c.device, "--out", str(out),
                     "--budget", str(budget), *(["--tiny"] if c.tiny else []))
        finally:
            if out.is_file():
                figures.update(json.loads(out.read_text()))

    step.__doc__ = f"bench.gpu_speed {measurement}"
    return step


def step_train_eval(c: Check, figures: dict[str, Any]) -> None:
    """`retrieval data synth` → `retrieval train` for one epoch on DEVICE → `retrieval eval` of the result."""
    images = 64 if c.tiny else 20_000
    workers = "1" if c.tiny else "8"
    c.timed(figures, "synth_s", "-m", "retrieval", "data", "synth", "--out", str(c.synth),
            "--images", str(images), "--workers", workers)
    figures["synth_images"] = images
    config = "configs/synth-tiny.yaml" if c.tiny else "configs/synth-small.yaml"
    sets = [f"training.device={c.device}", "training.epochs=1", f"data.path={c.synth / 'dataset.json'}",
            f"data.images={c.synth / 'images'}", f"data.workers={'0' if c.tiny else workers}",
            *(["training.max_steps=3"] if c.tiny else [])]
    figures["train_command"] = f"retrieval train --config {config} " + " ".join(f"--set {s}" for s in sets)
    c.timed(figures, "train_s", "-m", "retrieval", "train", "--config", config, "--out", str(c.run_dir),
            *(f"--set={s}" for s in sets))
    records = [json.loads(line) for line in (c.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    speeds = sorted(r["samples_per_s"] for r in train[1:] or train)  # the first window includes start-up
    figures.update(steps=train[-1]["step"], final_loss=round(train[-1]["loss"], 4),
                   samples_per_s_median=speeds[len(speeds) // 2],
                   val_rsum=next((round(r["rsum"], 2) for r in reversed(records) if r["kind"] == "val"), None))
    report = c.work / "eval.json"
    c.timed(figures, "eval_s", "-m", "retrieval", "eval", "--checkpoint", str(c.run_dir), *c.dataset,
            "--split", "test", "--device", c.device, "--json", str(report))
    evaluation = json.loads(report.read_text())
    figures["test"] = {k: round(v, 2) for k, v in evaluation["results"]["model"].items()}
    figures["eval_encode_s"] = round(evaluation["seconds"]["encode"], 2)


def step_embed_index(c: Check, figures: dict[str, Any]) -> None:
    """`retrieval embed` of every synth image (twice: the re-run finds all done, so its wall is the start-up),
    `retrieval index build` of images and captions, and `retrieval eval --index` through it."""
    if not (c.run_dir / "checkpoints" / "best.pt").is_file():
        raise StepError("needs the checkpoint that train_eval trains", "skipped")
    workers = ["--workers", "0" if c.tiny else "8"]
    embedded = c.work / "embedded"
    embed = ["-m", "retrieval", "embed", "--checkpoint", str(c.run_dir), "--image-dir", str(c.synth / "images"),
             "--out", str(embedded), "--device", c.device, "--batch-size", "512", *workers, "--no-progress"]
    c.timed(figures, "embed_s", *embed)
    c.timed(figures, "embed_startup_s", *embed)
    images = sum(1 for _ in (embedded / "images.jsonl").open())
    embedding_s = max(figures["embed_s"] - figures["embed_startup_s"], 1e-3)
    figures.update(images=images, images_per_s=round(images / embedding_s, 1))
    index = c.work / "index"
    c.timed(figures, "index_build_s", "-m", "retrieval", "index", "build", "--checkpoint", str(c.run_dir),
            *c.dataset, "--split", "all", "--device", c.device, *workers, "--out", str(index))
    manifest = json.loads((index / "manifest.json").read_text())
    figures["collections"] = {name: {k: info.get(k) for k in ("count", "kind", "factory", "search_params")}
                              for name, info in manifest["collections"].items()}
    report = c.work / "eval_index.json"
    c.timed(figures, "eval_index_s", "-m", "retrieval", "eval", "--checkpoint", str(c.run_dir), *c.dataset,
            "--split", "test", "--device", c.device, "--index", str(index), "--json", str(report))
    figures["ann_vs_exact_recall_at_10"] = json.loads(report.read_text())["index"]["ann_vs_exact_recall_at_10"]


# name -> (function, most seconds on a GPU, least seconds worth starting it with), in running order
STEPS: dict[str, tuple[Callable[[Check, dict[str, Any]], None], int, int]] = {
    "tests": (step_tests, 120, 30),
    "vitb16": (speed_step("vitb16"), 150, 60),
    "train_eval": (step_train_eval, 120, 45),
    "embed_index": (step_embed_index, 60, 20),
    "enn_local": (speed_step("enn_local"), 100, 45),
}


def environment(device: str) -> dict[str, Any]:
    """What ran where: versions (without importing torch here), the GPU as nvidia-smi names it, the date."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpu = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True).stdout.strip() or None
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device, "gpu": gpu, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "versions": versions}


def run_steps(c: Check, names: list[str], budget: float, write: Callable[[dict], None]) -> dict[str, Any]:
    """Run the chosen steps in order within `budget` seconds; every step gets a record, chosen or not."""
    end = time.monotonic() + budget
    steps: dict[str, Any] = {name: {"status": "skipped", "error": "not chosen (--steps)"} for name in STEPS}
    write(steps)
    chosen = [name for name in STEPS if name in names]
    for i, name in enumerate(chosen):
        fn, most, _ = STEPS[name]
        later = sum(STEPS[n][2] for n in chosen[i + 1:])
        # A dry run's steps are tiny but each command spends ~10 s importing torch on a busy 2-core CPU.
        limit = min(most * (3 if c.tiny else 1), end - time.monotonic() - later)
        record: dict[str, Any] = {"status": "ok", "limit_s": int(limit), "figures": {}}
        steps[name] = record
        print(f"[gpu_check] {name}: up to {limit:.0f} s", flush=True)
        start = time.monotonic()
        if limit < STEPS[name][2] / 2:
            record.update(status="skipped", error=f"only {limit:.0f} s left")
        else:
            c.deadline = start + limit
            try:
                fn(c, record["figures"])
            except StepError as err:
                record.update(status=err.status, error=str(err))
            except Exception as err:  # a bug in this script's own parsing must not cost the other steps
                record.update(status="failed", error=f"{type(err).__name__}: {err}")
        record["seconds"] = round(time.monotonic() - start, 1)
        print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s"
              + (f" ({record['error'][:300]})" if "error" in record else ""), flush=True)
        write(steps)
    return steps


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit code 0 when every chosen step is ok."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model, data and step counts")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny: proves every path on a CPU")
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=list(STEPS), help="default: all, in order")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all steps together")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="scratch folder (emptied first)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"issue": 16, "tiny": args.tiny, "budget_s": args.budget,
                              "command": " ".join(["python -m bench.gpu_check", *(argv or sys.argv[1:])]),
                              "environment": environment(args.device)}

    def write(steps: dict[str, Any]) -> None:
        (args.out / "gpu_check.json").write_text(json.dumps({**report, "steps": steps}, indent=1) + "\n")

    with open(args.out / "gpu_check.log", "a") as log:
        steps = run_steps(Check(args.device, args.tiny, args.work, log), args.steps, args.budget, write)
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'}")
    return 0 if all(steps[name]["status"] == "ok" for name in args.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
