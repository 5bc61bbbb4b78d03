"""The vectors `bench/scale.py` indexes: clustered synthetic ones at any size, or a `retrieval embed` folder's
real image vectors with captions as its texts (the sample queries a user would embed with `--text-file`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TEXTS = 10_000
CHUNK = 200_000


def clustered(n: int, dim: int, seed: int, out: Path | None = None) -> np.ndarray:
    """(n, dim) unit vectors: 1,000 wide clusters in a shared 64-d subspace plus noise (as search_latency's),
    generated in chunks with per-chunk seeds (deterministic, bounded memory); into a .npy memmap if `out`."""
    shared = np.random.default_rng(12345)
    rank = min(64, dim)
    basis = np.linalg.qr(shared.standard_normal((dim, rank)))[0].T
    centres = shared.standard_normal((1000, rank))
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim)) if out else np.empty((n, dim), np.float32)
    for number, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, number])
        m = min(CHUNK, n - start)
        latent = centres[rng.integers(0, len(centres), m)] + 0.8 * rng.standard_normal((m, rank))
        block = latent @ basis + 0.2 * rng.standard_normal((m, dim))
        array[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    if out:
        array.flush()
    return array


class Entries(Sequence):
    """N synthetic entries built on demand (a list of ten million dataclasses would take gigabytes)."""

    def __init__(self, n: int, make) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self.make(i) for i in range(*key.indices(self.n))]
        return self.make(key)


def caption_vectors(checkpoint: Path, captions: Sequence[str]) -> np.ndarray:
    """`captions` encoded by `checkpoint` (float32, L2-normalised rows): real text→image queries."""
    from retrieval.checkpoint import load_model
    from retrieval.encode import encode_texts

    return np.ascontiguousarray(encode_texts(load_model(checkpoint, device="cpu"), list(captions)), np.float32)


def with_texts(embedded, captions: Sequence[str], vectors: np.ndarray):
    """An image-only embed folder plus `captions` as its texts, as `retrieval embed --image-dir … --text-file …`
    would have made it: the index build then tunes the image index on text→image queries."""
    from retrieval.embed import TextEntry

    texts = [TextEntry(caption, None, {"line": n}) for n, caption in enumerate(captions, 1)]
    return dataclasses.replace(embedded, texts=texts, text_vectors=vectors)
