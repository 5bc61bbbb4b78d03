"""Recall through an index (`retrieval eval --index`): the same queries answered by the ANN index and by
exact search over the store's vectors, plus the index's own recall@10 against exact search.

The eval split's images must be in the index (matched by file path; captions via their `image_id`).
The index may hold more than the split: each search is restricted to the split's items inside FAISS (an
ID selector, `Collection.search(..., allowed=...)`), so the numbers compare with exact evaluation of the
split however large the index is. (Dropping other items after taking the top `depth` of the whole index
would push correct items out of reach and under-count recall.) Ranks come from the top `depth` results:
Recall@1/5/10 are exact, while a correct item beyond the depth counts as rank depth + 1, so medr/meanr
are lower bounds when they approach the depth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.data.evalset import EvalSet
from retrieval.errors import UserError
from retrieval.index.index_dir import IndexDir
from retrieval.metrics import summarize_ranks

Search = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) → (n, k) item ids


def evaluate_through_index(
    index_dir: str | Path,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    eval_set: EvalSet,
    fingerprint: str | None = None,
    depth: int = 100,
) -> dict[str, Any]:
    """{"rows": {"index (KIND)": metrics, "index exact": metrics}, "ann_vs_exact_recall_at_10": {...}}."""
    index = IndexDir(index_dir, fingerprint=fingerprint)
    try:
        image_of_item, caption_image = _ground_truth(index, eval_set)
        split_ids = {"image": _ids(image_of_item), "text": _ids(caption_image)}
        searchers = {
            "ann": {m: _ann(index, m, split_ids[m]) for m in ("image", "text")},
            "exact": {m: _exact(index, m, split_ids[m]) for m in ("image", "text")},
        }
        rows = {}
        for name, search in searchers.items():
            t2i = _ranks(search["image"], text_emb, eval_set.text_to_image, image_of_item, depth)
            i2t = _ranks(search["text"], image_emb, np.arange(eval_set.n_images), caption_image, depth)
            rows[name] = summarize_ranks(i2t, t2i)
        kinds = "/".join(sorted({c.kind for c in index.collections.values()}))
        # The queries the service answers, over the whole collection: captions against images, images
        # against captions.
        overlap = {
            m: _overlap(_ann(index, m)(queries, 10), _exact(index, m)(queries, 10))
            for m, queries in (("image", text_emb), ("text", image_emb))
        }
    finally:
        index.store.close()
    return {"rows": {f"index ({kinds})": rows["ann"], "index exact": rows["exact"]},
            "ann_vs_exact_recall_at_10": overlap, "depth": depth}


def _ground_truth(index: IndexDir, eval_set: EvalSet) -> tuple[dict[int, int], dict[int, int]]:
    """image item id → eval image row; caption item id → eval image row (captions of eval images only)."""
    by_uri = index.store.uris("image")
    image_of_item = {}
    for row, path in enumerate(eval_set.images):
        item = by_uri.get(str(Path(path).resolve()))
        if item is not None:
            image_of_item[item] = row
    if len(image_of_item) < eval_set.n_images:
        raise UserError(
            f"the index holds {len(image_of_item)} of the {eval_set.n_images} images of split {eval_set.name!r}: "
            "build it from the same split (`retrieval index build --data ... --split ...`)"
        )
    texts = index.store.get(index.store.ids("text").tolist())
    caption_image = {
        item_id: image_of_item[item.metadata["image_id"]]
        for item_id, item in texts.items()
        if item.metadata.get("image_id") in image_of_item
    }
    if not caption_image:
        raise UserError(f"the index holds none of the captions of split {eval_set.name!r}")
    return image_of_item, caption_image


def _ids(row_of: dict[int, int]) -> np.ndarray:
    return np.fromiter(row_of, dtype=np.int64, count=len(row_of))


def _ann(index: IndexDir, modality: str, allowed: np.ndarray | None = None) -> Search:
    """The collection's own (ANN) search, restricted to `allowed` item ids inside FAISS when given."""
    collection = index.collections[modality]
    return lambda queries, k: collection.search(queries, k, allowed=allowed)[1]


def _exact(index: IndexDir, modality: str, allowed: np.ndarray | None = None) -> Search:
    """Exact inner-product search over the store's vectors (of `allowed` items only, when given)."""
    ids = index.store.ids(modality) if allowed is None else np.sort(allowed)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(index.dim))
    if len(ids):
        flat.add_with_ids(index.store.embeddings_of(ids), ids)
    return lambda queries, k: flat.search(np.ascontiguousarray(queries, np.float32), k)[1]


def _ranks(search: Search, queries: np.ndarray, truth: np.ndarray, row_of: dict[int, int], depth: int) -> np.ndarray:
    """1-based rank of the best-placed result mapping to each query's correct row (text → image: the
    caption's image; image → text: any caption of the image); `search` returns eval-split items only."""
    found = search(queries, depth)
    ranks = np.full(len(queries), depth + 1, np.int64)
    for q, ids in enumerate(found):
        rows = [row_of[i] for i in ids.tolist() if i in row_of]
        if truth[q] in rows:
            ranks[q] = rows.index(truth[q]) + 1
    return ranks


def _overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean |ANN top-10 ∩ exact top-10| / 10 (over the whole collection, not just the split)."""
    hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx, exact, strict=True))
    total = sum(int((e >= 0).sum()) for e in exact)
    return hits / total if total else 1.0
