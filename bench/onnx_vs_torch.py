"""ONNX Runtime vs PyTorch on CPU: the service's two encoders on the same model, text and image towers,
batch 1 (one interactive query) and batch 32 (a gathered batch / bulk embedding).

Both sides are exactly what `retrieval serve` runs: `service.encoder.TorchEncoder` (ENN weights merged,
inference mode) and `service.onnx_encoder.OnnxEncoder` (the `retrieval export --format onnx` towers).
Timed per call: images from preprocessed pixels (`encode_pixels`), texts from strings (`encode_texts`,
tokenization included on both sides). Variants run interleaved, round-robin, after a warm-up, with the
same thread count; each number is the median of `--runs` calls.

Usage: .venv/bin/python bench/onnx_vs_torch.py [--config configs/synth-small.yaml | --checkpoint CKPT]
       [--threads 1 2] [--runs 30]
Writes bench/results/onnx_vs_torch.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "onnx_vs_torch.json"
CAPTIONS = [
    "a small red circle to the left of a large blue square",
    "two green triangles above a yellow star",
    "a purple diamond below an orange plus sign on a grey background",
    "there is a tiny white rhombus near a big black disc",
]


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, alternating between them so both see the same load."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(warmup + runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if step >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def make_checkpoint(args: argparse.Namespace, folder: Path) -> Path:
    """The benchmarked checkpoint: the given one, or the config's model at initialisation (speed does not
    depend on the weights' values)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import load_config
    from retrieval.model import build_towers

    config = load_config(args.config)
    path = folder / "model.pt"
    save_checkpoint(path, build_towers(config), config)
    return path


def main(argv: list[str] | None = None) -> int:
    """Export, time both encoders, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", default=str(ROOT / "configs" / "synth-small.yaml"))
    source.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="intra-op thread counts to compare (torch and ONNX Runtime get the same)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from retrieval.checkpoint import load_model
    from retrieval.export import OnnxModel, load_source, write_onnx_dir
    from service.encoder import TorchEncoder
    from service.onnx_encoder import OnnxEncoder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(args, Path(tmp))
        write_onnx_dir(load_source(checkpoint), Path(tmp) / "onnx")
        torch_encoder = TorchEncoder(load_model(checkpoint, device="cpu"))
        rng = np.random.default_rng(0)
        picture = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
        pixel = torch_encoder.preprocess_image(picture)
        load_before = os.getloadavg()[0]
        for threads in args.threads:
            torch.set_num_threads(threads)
            encoders = {"torch": torch_encoder,
                        "onnx": OnnxEncoder(OnnxModel.load(Path(tmp) / "onnx", threads=threads))}
            model_cfg = encoders["onnx"].model.model_cfg
            for batch in args.batches:
                pixels = np.stack([pixel] * batch)
                texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
                for tower, call in (("image", lambda e, p=pixels: e.encode_pixels(p)),
                                    ("text", lambda e, t=texts: e.encode_texts(t))):
                    fns = {name: (lambda e=enc, c=call: c(e)) for name, enc in encoders.items()}
                    times = time_interleaved(fns, args.runs, args.warmup)
                    medians = {name: statistics.median(ts) for name, ts in times.items()}
                    rows.append({
                        "threads": threads,
                        "tower": tower,
                        "batch": batch,
                        "torch_ms": medians["torch"],
                        "onnx_ms": medians["onnx"],
                        "speedup_onnx": medians["torch"] / medians["onnx"],
                        "torch_ms_all": times["torch"],
                        "onnx_ms_all": times["onnx"],
                    })

    print(f"{'threads':>7} {'tower':<6} {'batch':>5} {'torch ms':>10} {'onnx ms':>10} {'onnx speed-up':>14}")
    for row in rows:
        print(f"{row['threads']:>7} {row['tower']:<6} {row['batch']:>5} {row['torch_ms']:>10.2f} {row['onnx_ms']:>10.2f} "
              f"{row['speedup_onnx']:>13.2f}×")
    result = {
        "benchmark": "onnx_vs_torch",
        "date": datetime.date.today().isoformat(),
        "command": "bench/onnx_vs_torch.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {"source": args.checkpoint or args.config, "model_cfg": model_cfg},
        "runs": args.runs,
        "warmup": args.warmup,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
