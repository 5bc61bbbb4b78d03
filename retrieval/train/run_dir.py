"""A run directory: config.yaml, checkpoints/{last,best}.pt, metrics.jsonl and curves.png."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunDir:
    """Paths inside RUN_DIR, and the metrics log (one JSON object per line, appended as training goes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        """The resolved config the run trained with."""
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        """Folder of `last.pt` (resume point) and `best.pt` (best validation RSUM)."""
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The checkpoint `--resume` continues from."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation RSUM (what eval/embed/serve use for RUN_DIR)."""
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        """metrics.jsonl: one record per log step (`"kind": "train"`) or validation (`"kind": "val"`)."""
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        """curves.png: loss, validation RSUM and orthogonality error against the step."""
        return self.root / "curves.png"

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one record (a flat dict with at least `kind` and `step`) to metrics.jsonl."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(dict(record), sort_keys=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl, in order ([] before the first)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after `step`: a resumed run repeats those steps and logs them again."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def plot_curves(self) -> None:
        """Redraw curves.png from metrics.jsonl (matplotlib, Agg backend: no display needed)."""
        plot_curves(self.read_metrics(), self.curves)


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and _finite(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> None:
    """Three panels against the optimizer step: training loss, validation RSUM, orthogonality error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("train", "loss", "training loss", "linear"),
        ("val", "rsum", "validation RSUM", "linear"),
        ("train", "orthogonality_error", "orthogonality error (max ‖QᵀQ−I‖_F)", "symlog"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (kind, key, title, scale) in zip(axes, panels, strict=True):
        steps, values = _series(records, kind, key)
        if steps:
            ax.plot(steps, values, marker="o" if kind == "val" else None, markersize=3)
            ax.set_yscale(scale, **({"linthresh": 1e-6} if scale == "symlog" else {}))
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
