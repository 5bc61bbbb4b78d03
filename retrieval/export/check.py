"""Export checks: an exported model must embed a test batch like the checkpoint it came from."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils import parametrize

from retrieval.export.source import ExportSource

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999

# Captions of different lengths (one longer than small context lengths, so truncation is exercised).
SAMPLE_TEXTS = [
    "a red circle",
    "two small blue squares left of a large green triangle",
    "a yellow star above a purple circle, next to a tiny orange square on a grey background, seen from far away",
]


class ExportCheckError(RuntimeError):
    """An exported model disagrees with the checkpoint beyond float tolerance: the export is not usable."""


def sample_images(n: int = 3) -> list[Image.Image]:
    """Deterministic noise images (not square, so resizing and cropping are exercised too)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)) for _ in range(n)]


@torch.no_grad()
def reference_embeddings(source: ExportSource) -> dict[str, np.ndarray]:
    """What the checkpoint (ENN form, float32, CPU, its own preprocessing) computes for the sample inputs."""
    pixels = torch.stack([source.merged.preprocess_val(img) for img in sample_images()])
    tokens = source.merged.tokenizer(SAMPLE_TEXTS)
    with parametrize.cached():  # each ENN weight formed once for both towers, not once per read
        return {
            "image": F.normalize(source.reference.encode_image(pixels), dim=-1).numpy(),
            "text": F.normalize(source.reference.encode_text(tokens), dim=-1).numpy(),
        }


def min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two (N, D) embedding batches."""
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    return float((got * want).sum(axis=1).min())


def require_close(what: str, got: np.ndarray, want: np.ndarray) -> float:
    """Raise ExportCheckError unless every row agrees to cosine ≥ MIN_COSINE; returns the worst cosine."""
    if got.shape != want.shape:
        raise ExportCheckError(f"{what}: output shape {got.shape} != PyTorch's {want.shape}")
    if not np.isfinite(got).all():
        raise ExportCheckError(f"{what}: output contains NaN or inf")
    worst = min_cosine(got, want)
    if worst < MIN_COSINE:
        raise ExportCheckError(f"{what}: cosine to the PyTorch checkpoint is {worst:.6f} < {MIN_COSINE}")
    log.info("%s matches the checkpoint (min cosine %.6f)", what, worst)
    return worst
