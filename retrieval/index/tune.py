"""Tune an ANN index's search parameters to a recall target, measured against exact (Flat) search.

Recall@10 here is the neighbour overlap |ANN top-10 ∩ exact top-10| / 10, averaged over queries drawn
from the collection itself (leave-one-out: a query's own vector is excluded from both lists, so it is
held out of its own answer) and, when the other modality is available, from the other modality's
vectors (the cross-modal queries the service actually answers). The cheapest setting that reaches
the target wins (efSearch for HNSW; nprobe, then the refine factor, for IVF-PQ).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from retrieval.index.collection import Collection
from retrieval.index.factory import ivf_of

log = logging.getLogger(__name__)

TARGET_RECALL = 0.98
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
K_FACTOR_GRID = (2, 4, 8, 16)
PLATEAU_GAIN = 0.002  # recall@10 gains below this (20 of the probe's 10,000 top-10 hits) are not worth a costlier search
PLATEAU_STEPS = 2


@dataclass
class Probe:
    """Queries with the ids to leave out of their answers (-1 = none) and their exact top-k."""

    queries: np.ndarray  # (n, D)
    exclude: np.ndarray  # (n,) int64
    truth: np.ndarray  # (n, k) int64, -1 padded
    k: int


def make_probe(
    vectors: np.ndarray,
    ids: np.ndarray,
    other: np.ndarray | None = None,
    n_queries: int = 1000,
    k: int = 10,
    seed: int = 0,
) -> Probe:
    """Sample queries (half own vectors held out of their own answers, half `other`) and their exact top-k."""
    rng = np.random.default_rng(seed)
    n_other = 0 if other is None or not len(other) else min(len(other), n_queries // 2)
    n_own = min(len(vectors), n_queries - n_other)
    own = np.sort(rng.choice(len(vectors), n_own, replace=False))
    parts = [np.asarray(vectors[own], np.float32)]
    exclude = [np.asarray(ids)[own]]
    if n_other:
        parts.append(np.asarray(other[np.sort(rng.choice(len(other), n_other, replace=False))], np.float32))
        exclude.append(np.full(n_other, -1, np.int64))
    queries, excluded = np.concatenate(parts), np.concatenate(exclude).astype(np.int64)
    return Probe(queries, excluded, _drop_excluded(exact_search(queries, vectors, ids, k + 1), excluded, k), k)


def exact_search(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact inner-product top-k ids, streamed over `vectors` in chunks (a memory map of ten million rows is
    never copied whole): FAISS's `knn_ground_truth`."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    blocks = (np.ascontiguousarray(vectors[i : i + chunk], np.float32) for i in range(0, len(vectors), chunk))
    _, rows = knn_ground_truth(np.ascontiguousarray(queries, np.float32), blocks, k,
                               metric_type=faiss.METRIC_INNER_PRODUCT)
    ids = np.asarray(ids, np.int64)
    return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def _drop_excluded(found: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k ids other than the row's excluded id (-1 padded)."""
    out = np.full((len(found), k), -1, np.int64)
    for row, (ids, skip) in enumerate(zip(found, exclude, strict=True)):
        kept = ids[(ids != skip) & (ids >= 0)][:k]
        out[row, : len(kept)] = kept
    return out


def measure_recall(collection: Collection, probe: Probe) -> float:
    """Mean overlap of the collection's top-k with the exact top-k over the probe queries."""
    _, found = collection.search(probe.queries, probe.k + 1)
    approx = _drop_excluded(found, probe.exclude, probe.k)
    hits = total = 0
    for got, want in zip(approx, probe.truth, strict=True):
        want = want[want >= 0]
        hits += len(np.intersect1d(got, want))
        total += len(want)
    return hits / total if total else 1.0


def candidate_settings(collection: Collection) -> list[dict[str, Any]]:
    """Search settings from cheapest to most thorough."""
    if collection.kind == "hnsw":
        return [{"efSearch": ef} for ef in EF_SEARCH_GRID]
    if collection.kind == "ondisk":
        nlist = collection.nlist
        return [{"nprobe": p} for p in sorted({min(nlist, 2**i) for i in range(0, int(np.log2(max(1, nlist))) + 2)})]
    if collection.kind == "ivfpq":
        nlist = ivf_of(collection.index).nlist
        nprobes = sorted({min(nlist, 2**i) for i in range(0, int(np.log2(max(1, nlist))) + 2)})
        refined = isinstance(faiss.downcast_index(collection.index.index), faiss.IndexRefine)
        factors = K_FACTOR_GRID if refined else (1,)
        return [{"nprobe": p, "k_factor": f} for p in nprobes for f in factors]
    return [{}]


def tune(collection: Collection, probe: Probe, target: float = TARGET_RECALL) -> tuple[dict[str, Any], float]:
    """Set the cheapest search parameters reaching `target` recall@k; returns them and the recall.

    When no setting reaches the target (the codes' error caps recall: SQ8 at 10M clustered vectors stops at
    ~0.97), the search stops once `PLATEAU_STEPS` more thorough settings have gained less than
    `PLATEAU_GAIN`, and keeps the cheapest setting within `PLATEAU_GAIN` of the best recall found: scanning
    half the lists for the last 0.001 of recall would cost a hundred times the latency. A warning says so.
    """
    tried: list[tuple[dict[str, Any], float]] = []
    one_knob = collection.kind in ("hnsw", "ondisk")  # ivfpq's grid has two knobs: no plateau along one
    for settings in candidate_settings(collection):
        collection.configure(settings)
        recall = measure_recall(collection, probe)
        if recall >= target:
            log.info("%s %s: recall@%d %.4f with %s", collection.modality, collection.kind, probe.k, recall, settings)
            return settings, recall
        tried.append((settings, recall))
        best = max(r for _, r in tried)
        if one_knob and len(tried) > PLATEAU_STEPS and max(r for _, r in tried[:-PLATEAU_STEPS]) >= best - PLATEAU_GAIN:
            break
    settings, recall = next((s, r) for s, r in tried if r >= best - PLATEAU_GAIN)
    log.warning(
        "%s %s index: recall@%d reaches only %.4f (target %.2f); kept %s (recall %.4f), the cheapest within %.3f "
        "of the best", collection.modality, collection.kind, probe.k, best, target, settings, recall, PLATEAU_GAIN,
    )
    collection.configure(settings)
    return settings, recall
