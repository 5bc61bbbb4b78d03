"""Datasets: Karpathy split JSON and CSV/TSV/JSONL pairs → `ImageRecord`s → training samples / eval sets.

`retrieval.data.synth` draws the embedded default dataset (procedural scenes) in the Karpathy format.
Names are imported on first use, so `retrieval data synth` (and its worker processes) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KNOWN_SPLITS": "retrieval.data.records",
    "ImageRecord": "retrieval.data.records",
    "load_records": "retrieval.data.records",
    "scan_records": "retrieval.data.records",
    "Problems": "retrieval.data.problems",
    "BadImageError": "retrieval.data.images",
    "find_unreadable": "retrieval.data.images",
    "load_image": "retrieval.data.images",
    "EvalSet": "retrieval.data.evalset",
    "ImageDataset": "retrieval.data.evalset",
    "fold_indices": "retrieval.data.evalset",
    "image_loader": "retrieval.data.evalset",
    "TrainDataset": "retrieval.data.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retrieval.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
