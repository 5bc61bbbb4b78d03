"""Helpers for the index tests: embedded collections made of synthetic vectors (no model needed)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from retrieval.embed import Embedded, ImageEntry, TextEntry
from retrieval.index import IndexDir

# The tests share two cores with other work; FAISS's OpenMP threads spin-wait on busy cores and make
# k-means training ~10× slower than one thread does.
faiss.omp_set_num_threads(1)


def unit_rows(n: int, dim: int, seed: int, rank: int = 8) -> np.ndarray:
    """(n, dim) unit vectors with low intrinsic dimension, like real embeddings (random data is ANN's worst case)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, dim)) + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_embedded(folder: Path, n_images: int, n_texts: int, dim: int = 32, seed: int = 0,
                  fingerprint: str = "f" * 16) -> Embedded:
    """A finished-embeddings stand-in: images at /img/N.png, text j describing image j % n_images."""
    images = unit_rows(n_images, dim, seed)
    owner = np.arange(n_texts) % max(1, n_images)
    noise = unit_rows(n_texts, dim, seed + 1)
    texts = images[owner] + 0.5 * noise if n_images else noise
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)
    return Embedded(
        folder=folder,
        fingerprint=fingerprint,
        dim=dim,
        images=[ImageEntry(f"/img/{n}.png", f"image {n}", {"n": n}) for n in range(n_images)],
        texts=[TextEntry(f"text {j}", int(owner[j]) if n_images else None, {}) for j in range(n_texts)],
        image_vectors=images,
        text_vectors=texts,
    )


def crash(index: IndexDir) -> None:
    """What a kill -9 leaves of a writer: no snapshot, no store close; only the kernel's drop of its lock."""
    index._writer_lock.release()
