"""Recall through an index (`retrieval eval --index`): the same queries answered by the served ANN index and
by exact search over the store's vectors, plus the index's own recall@10 against exact search.

The eval split's images must be in the index (matched by file path; captions via their `image_id`).
What the ANN row measures is the search the service runs, with the collection's tuned parameters:
- an index that holds exactly the split (built with `--split`): the unrestricted search of a query;
- an index that holds more: a search restricted to the split inside the ANN index by an ID selector, with
  the search budget (efSearch, nprobe) widened by the inverse of the split's share, as the service
  answers a filter matching that many items (`Collection.search_ann`). The service would score a small
  filter's items exhaustively instead; that exact path is the "index exact" row, so here the split always
  goes through the ANN. Searching the whole index and then dropping other splits' items was the
  alternative; it leaves fewer than k split items in many answers, and so under-counts recall.
Recall@1/5/10 come from one top-10 request per query (the service's default k: a refined IVF index re-scores
k·k_factor candidates, so a deeper request would rank better than a user's); ranks beyond 10 come from a
top-`depth` request, a correct item beyond it counting as rank depth + 1, so medr/meanr are lower bounds
when they approach the depth.
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
RECALL_K = 10  # Recall@1/5/10 come from one request of this many results, the service's default k


def evaluate_through_index(
    index_dir: str | Path,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    eval_set: EvalSet,
    fingerprint: str | None = None,
    depth: int = 100,
) -> dict[str, Any]:
    """{"rows": {"index (KIND)": metrics, "index exact": metrics}, "search": {modality: how the ANN row
    searched it}, "ann_vs_exact_recall_at_10": {...}, "depth": depth}."""
    if depth < RECALL_K:
        raise ValueError(f"depth must be at least {RECALL_K}, got {depth}")
    # Read-only (a replica's view): evaluating writes nothing, and works beside the service that writes the folder.
    index = IndexDir(index_dir, mmap=True, fingerprint=fingerprint)
    try:
        image_of_item, caption_image = _ground_truth(index, eval_set)
        split_ids = {"image": _ids(image_of_item), "text": _ids(caption_image)}
        whole = {m: len(split_ids[m]) == index.store.count(m) for m in ("image", "text")}
        searchers = {
            "ann": {m: _ann(index, m, None if whole[m] else split_ids[m]) for m in ("image", "text")},
            "exact": {m: _exact(index, m, split_ids[m]) for m in ("image", "text")},
        }
        rows = {}
        for name, search in searchers.items():
            t2i = _ranks(search["image"], text_emb, eval_set.text_to_image, image_of_item, depth)
            i2t = _ranks(search["text"], image_emb, np.arange(eval_set.n_images), caption_image, depth)
            rows[name] = summarize_ranks(i2t, t2i)
        kinds = "/".join(sorted({c.kind for c in index.collections.values()}))
        search = {m: _described(index, m, len(split_ids[m]), whole[m]) for m in ("image", "text")}
        # The queries the service answers, over the whole collection: captions against images, images
        # against captions.
        overlap = {
            m: _overlap(_ann(index, m)(queries, 10), _exact(index, m)(queries, 10))
            for m, queries in (("image", text_emb), ("text", image_emb))
        }
    finally:
        index.close()
    return {"rows": {f"index ({kinds})": rows["ann"], "index exact": rows["exact"]}, "search": search,
            "ann_vs_exact_recall_at_10": overlap, "depth": depth}


def _described(index: IndexDir, modality: str, split_items: int, whole: bool) -> dict[str, Any]:
    """Which index and parameters answered the ANN row's searches of `modality`, and how the split was kept."""
    collection = index.collections[modality]
    return {"kind": collection.kind, "search_params": dict(collection.search_params),
            "items": index.store.count(modality), "split_items": split_items,
            "restriction": "none (the index holds the split)" if whole else "ID selector, widened budget"}


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
    """The collection's served ANN search; restricted to `allowed` item ids through the ANN when given."""
    collection = index.collections[modality]
    if allowed is None:
        return lambda queries, k: collection.search(queries, k)[1]
    return lambda queries, k: collection.search_ann(queries, k, allowed)[1]


def _exact(index: IndexDir, modality: str, allowed: np.ndarray | None = None) -> Search:
    """Exact inner-product search over the store's vectors (of `allowed` items only, when given)."""
    ids = index.store.ids(modality) if allowed is None else np.sort(allowed)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(index.dim))
    if len(ids):
        flat.add_with_ids(index.store.embeddings_of(ids), ids)
    return lambda queries, k: flat.search(np.ascontiguousarray(queries, np.float32), k)[1]


def _ranks(search: Search, queries: np.ndarray, truth: np.ndarray, row_of: dict[int, int], depth: int) -> np.ndarray:
    """1-based rank of the best-placed result mapping to each query's correct row (text → image: the
    caption's image; image → text: any caption of the image); `search` returns eval-split items only.
    Within the top RECALL_K, the rank a top-RECALL_K request gives; beyond, at least RECALL_K + 1."""
    served = _first_hits(search(queries, RECALL_K), truth, row_of)
    deep = _first_hits(search(queries, depth), truth, row_of)
    return np.where(served <= RECALL_K, served, np.maximum(deep, RECALL_K + 1))


def _first_hits(found: np.ndarray, truth: np.ndarray, row_of: dict[int, int]) -> np.ndarray:
    """Per query, the 1-based position of the correct row among `found` (k + 1 when absent)."""
    ranks = np.full(len(found), found.shape[1] + 1, np.int64)
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
