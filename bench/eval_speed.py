"""Recall@K speed and memory at COCO-5K size: 5,000 images × 25,000 captions, 512-d normalised embeddings.

Targets: ≤ 3 s per `retrieval_metrics` call and ≤ 1 GB of extra resident memory, on 2 cores.
Each measurement runs in a fresh child process, so the memory baseline holds only Python, torch and the
two embedding matrices. Extra memory = peak RSS during the calls − RSS just before them; the kernel's
peak counter (VmHWM) is reset first through /proc/self/clear_refs (else ru_maxrss is used, which can
only over-state the baseline's share).

Wall time depends on what else runs on the machine, so the CPU time of the call (all threads) and the
load average are recorded too.

Usage: .venv/bin/python bench/eval_speed.py [--images 5000] [--captions 25000] [--dim 512] [--repeats 3]
Writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"
TARGET_SECONDS = 3.0
TARGET_EXTRA_MB = 1024.0


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    """The measurement itself (run in a fresh process)."""
    import numpy as np
    import torch

    from retrieval.metrics import retrieval_metrics

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    per_image = args.captions // args.images
    images = rng.standard_normal((args.images, args.dim), dtype=np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owner = np.repeat(np.arange(args.images), per_image)
    # captions near their image, so ranks are spread like a half-trained model's
    texts = images[owner] + rng.standard_normal((len(owner), args.dim), dtype=np.float32) * 0.06
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)

    baseline = _status_mb("VmRSS")
    reset = _reset_peak()
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, cpu_times, metrics = [], [], {}
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = retrieval_metrics(images, texts, owner)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": times,
        "cpu_seconds": cpu_times,  # all threads together: what the call costs whatever else runs
        "baseline_rss_mb": baseline if baseline is not None else ru_before,
        "peak_rss_mb": peak,
        "extra_mb": peak - (baseline if baseline is not None else ru_before),
        "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss",
        "threads": torch.get_num_threads(),
        "rsum": metrics["rsum"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    command = [sys.executable, __file__, "--child", "--images", str(args.images), "--captions", str(args.captions),
               "--dim", str(args.dim), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    load_before = os.getloadavg()[0]  # other work on the machine inflates the times; keep it on record
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    median = statistics.median(result["seconds"])
    rows = [
        ("matrix", f"{args.images} images × {args.captions} captions × {args.dim}-d"),
        ("threads", str(result["threads"])),
        ("seconds per call (median)", f"{median:.2f}  (target ≤ {TARGET_SECONDS:.0f})"),
        ("seconds per call (all)", ", ".join(f"{t:.2f}" for t in result["seconds"])),
        ("CPU seconds per call (median)", f"{statistics.median(result['cpu_seconds']):.2f}"),
        ("extra memory MB (peak)", f"{result['extra_mb']:.0f}  (target ≤ {TARGET_EXTRA_MB:.0f})"),
        ("baseline RSS MB", f"{result['baseline_rss_mb']:.0f}"),
        ("peak measured by", result["peak_method"]),
        ("1-min load average before", f"{load_before:.1f} on {os.cpu_count()} CPUs"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    report = {
        "benchmark": "eval_speed",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before},
        "config": {k: getattr(args, k) for k in ("images", "captions", "dim", "repeats", "threads")},
        "median_seconds": median,
        "meets_time_target": median <= TARGET_SECONDS,
        "meets_memory_target": result["extra_mb"] <= TARGET_EXTRA_MB,
        **result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
