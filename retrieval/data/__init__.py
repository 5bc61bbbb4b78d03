"""Datasets: Karpathy split JSON and CSV/TSV/JSONL pairs → `ImageRecord`s → training samples / eval sets.

`retrieval.data.synth` draws the embedded default dataset (procedural scenes) in the Karpathy format.
"""

from retrieval.data.evalset import EvalSet, ImageDataset, fold_indices, image_loader
from retrieval.data.images import BadImageError, find_unreadable, load_image
from retrieval.data.problems import Problems
from retrieval.data.records import KNOWN_SPLITS, ImageRecord, load_records, scan_records
from retrieval.data.train import TrainDataset

__all__ = [
    "KNOWN_SPLITS",
    "BadImageError",
    "EvalSet",
    "ImageDataset",
    "ImageRecord",
    "Problems",
    "TrainDataset",
    "find_unreadable",
    "fold_indices",
    "image_loader",
    "load_image",
    "load_records",
    "scan_records",
]
