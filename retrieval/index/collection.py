"""One modality's live FAISS index: search with tuned parameters, add, delete, reconcile with the store.

Deletion policy: a `flat` index removes vectors for real. HNSW cannot remove, and an IVF-PQ index
behind a refine step cannot either, so for those the deleted ids become tombstones: they are excluded
at search time with a FAISS `IDSelector` (so a query still gets k live results) and physically dropped
when the index is rebuilt from the store — at start-up, once they exceed `COMPACT_FRACTION` of it.
The store is the truth; tombstones are simply "ids in the FAISS file that the store no longer has".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from retrieval.index.factory import index_ids, inner, set_search_params

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.1


class Collection:
    """A FAISS index (IDMap2: labels are item ids) plus its kind and search parameters. Not thread-safe:
    the owner serialises writes against searches."""

    def __init__(self, modality: str, index: faiss.Index, kind: str, search_params: dict[str, Any]) -> None:
        self.modality = modality
        self.index = index
        self.kind = kind
        self.search_params = dict(search_params)
        self.tombstones: set[int] = set()
        self._filter: tuple | None = None  # SearchParameters + the selectors they point to (kept alive)
        set_search_params(index, kind, self.search_params)

    def configure(self, search_params: dict[str, Any]) -> None:
        """Switch to other search parameters (tuning, or an operator's override)."""
        self.search_params = dict(search_params)
        set_search_params(self.index, self.kind, self.search_params)
        self._filter = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; id -1 where fewer than k items exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = self._filter_params()
        return self.index.search(queries, k, params=params)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under item ids (the index must be trained)."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Delete item ids: really for `flat`, as tombstones otherwise."""
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return
        if self.kind == "flat":
            self.index.remove_ids(ids)
            return
        self.tombstones.update(int(i) for i in ids)
        self._filter = None

    def reconcile(self, store_ids: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray]) -> dict[str, int]:
        """Make the index hold exactly `store_ids`: add the missing (vectors from `fetch`), drop the rest."""
        held = index_ids(self.index)
        missing = np.setdiff1d(store_ids, held, assume_unique=True)
        extra = np.setdiff1d(held, store_ids, assume_unique=True)
        for start in range(0, len(missing), 20_000):
            part = missing[start : start + 20_000]
            self.add(fetch(part), part)
        self.tombstones.clear()
        self.remove(extra)
        if self.kind != "flat" and len(extra) > COMPACT_FRACTION * max(1, self.index.ntotal):
            self.rebuild(store_ids, fetch)
        return {"added": int(len(missing)), "removed": int(len(extra))}

    def rebuild(self, store_ids: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray]) -> None:
        """Drop every vector and re-add the store's (keeps IVF training and the search parameters)."""
        log.info("rebuilding the %s index from the store (%d items, %d deleted)", self.modality, len(store_ids), len(self.tombstones))
        self.index.reset()
        for start in range(0, len(store_ids), 20_000):
            part = store_ids[start : start + 20_000]
            self.add(fetch(part), part)
        self.tombstones.clear()
        self._filter = None

    def _filter_params(self) -> faiss.SearchParameters | None:
        """Search parameters that skip tombstones (None when there are none: the fast path)."""
        if not self.tombstones:
            return None
        if self._filter is None:
            self._filter = self._make_filter()
        return self._filter[0]

    def _make_filter(self) -> tuple:
        dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
        if self.kind == "hnsw":
            # IDMap2 translates a selector on item ids to the HNSW's internal positions.
            batch = faiss.IDSelectorBatch(dead)
            sel = faiss.IDSelectorNot(batch)
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(self.search_params["efSearch"])
            params.sel = sel
            return params, sel, batch
        base = faiss.SearchParametersIVF()
        base.nprobe = int(self.search_params["nprobe"])
        if not isinstance(inner(self.index), faiss.IndexRefine):
            batch = faiss.IDSelectorBatch(dead)  # translated by IDMap2, like HNSW
            base.sel = sel = faiss.IDSelectorNot(batch)
            return base, sel, batch
        # IndexRefine passes only its base_index_params down, untranslated, so the selector there must
        # name internal positions (the IDMap2 slots of the dead ids), not item ids.
        positions = np.flatnonzero(np.isin(index_ids(self.index), dead)).astype(np.int64)
        batch = faiss.IDSelectorBatch(positions)
        base.sel = sel = faiss.IDSelectorNot(batch)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(self.search_params["k_factor"])
        params.base_index_params = base
        return params, base, sel, batch
