"""One modality's live FAISS index: search with tuned parameters, add, delete, reconcile with the store.

Deletion policy: a `flat` index removes vectors for real. HNSW cannot remove, and an IVF-PQ index
behind a refine step cannot either, so for those the deleted ids become tombstones: they are excluded
at search time with a FAISS `IDSelector` (so a query still gets k live results) and physically dropped
when the index is rebuilt from the store — at start-up, once they exceed `COMPACT_FRACTION` of it.
The store is the truth; tombstones are simply "ids in the FAISS file that the store no longer has".

Filtered search (`allowed`: the ids a metadata filter matched) is restricted inside FAISS by an ID selector,
never by dropping results afterwards, so k results come back whenever k allowed items exist: a small allowed
set (≤ `EXACT_MAX_MATCHES`) is searched exhaustively — only its own vectors are scored; a larger one goes
through the ANN index with a selector and a search budget (efSearch, nprobe) widened by the inverse of the
allowed fraction, and any query left short of k is answered exhaustively instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from retrieval.index.factory import index_ids, inner, ivf_of, set_search_params

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.1
EXACT_MAX_MATCHES = 20_000  # like `factory.FLAT_MAX_ITEMS`: scoring this many vectors costs about a millisecond
MAX_EF_SEARCH = 4096


def bitmap_selector(members: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """A FAISS selector of exactly `members` (non-negative ints): one bit per value up to the largest, O(1) per
    test; returned with the bitmap it points to, which must stay alive while the selector is used."""
    bits = np.zeros(int(members.max()) + 1 if len(members) else 1, bool)
    bits[members] = True
    packed = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed)), packed


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
        self._slots: tuple[np.ndarray, np.ndarray] | None = None  # ids in storage order, and their argsort
        set_search_params(index, kind, self.search_params)

    def configure(self, search_params: dict[str, Any]) -> None:
        """Switch to other search parameters (tuning, or an operator's override)."""
        self.search_params = dict(search_params)
        set_search_params(self.index, self.kind, self.search_params)
        self._filter = None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; id -1 where fewer than k items exist (or are `allowed`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is None:
            return self.index.search(queries, k, params=self._filter_params())
        allowed = np.asarray(allowed, np.int64)
        if self.kind == "flat":  # exact already; IDMap2 translates a selector on item ids
            sel, _bits = bitmap_selector(allowed)
            return self.index.search(queries, k, params=faiss.SearchParameters(sel=sel))
        positions = self._positions(allowed)
        if not len(positions):  # nothing allowed is held (an empty index, or no match): no storage to score
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if len(positions) <= EXACT_MAX_MATCHES:
            return self._exhaustive(queries, k, allowed, positions)
        scores, ids = self._widened(queries, k, allowed, positions)
        short = (ids >= 0).sum(axis=1) < min(k, len(positions))
        if short.any():
            scores[short], ids[short] = self._exhaustive(queries[short], k, allowed, positions)
        return scores, ids

    def search_ann(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`search` restricted to `allowed` through the ANN index however few they are: the selector and
        widened budget of a large filter, never the exhaustive path (what `retrieval eval --index` measures)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = np.asarray(allowed, np.int64)
        if self.kind == "flat":
            return self.search(queries, k, allowed)
        return self._widened(queries, k, allowed, self._positions(allowed))

    def _widened(self, queries: np.ndarray, k: int, allowed: np.ndarray, positions: np.ndarray) -> tuple:
        """ANN search restricted to `allowed`, its budget scaled by 1 / (allowed fraction)."""
        scale = int(np.ceil(self.index.ntotal / max(1, len(positions))))
        if self.kind == "hnsw":
            sel, _bits = bitmap_selector(allowed)
            params = faiss.SearchParametersHNSW()
            params.sel = sel
            params.efSearch = min(MAX_EF_SEARCH, max(k, int(self.search_params.get("efSearch", 16)) * scale))
            return self.index.search(queries, k, params=params)
        nprobe = int(self.search_params.get("nprobe", 1)) * scale
        return self._ivf(queries, k, allowed, positions, nprobe)

    def _exhaustive(self, queries: np.ndarray, k: int, allowed: np.ndarray, positions: np.ndarray) -> tuple:
        """Score every allowed vector: HNSW's flat storage, or every IVF list (codes, then the refine step)."""
        if self.kind != "hnsw":
            return self._ivf(queries, k, allowed, positions, ivf_of(self.index).nlist)
        storage = faiss.downcast_index(inner(self.index).storage)
        sel, _bits = bitmap_selector(positions)
        scores, slots = storage.search(queries, k, params=faiss.SearchParameters(sel=sel))
        held, _ = self._storage_ids()
        return scores, np.where(slots >= 0, held[np.maximum(slots, 0)], -1)

    def _ivf(self, queries: np.ndarray, k: int, allowed: np.ndarray, positions: np.ndarray, nprobe: int) -> tuple:
        refined = isinstance(inner(self.index), faiss.IndexRefine)
        # Below IndexRefine the selector sees storage positions (untranslated); otherwise IDMap2 translates ids.
        sel, _bits = bitmap_selector(positions if refined else allowed)  # both kept alive for the search
        base = faiss.SearchParametersIVF()
        base.nprobe = min(int(nprobe), ivf_of(self.index).nlist)
        base.sel = sel
        if not refined:
            return self.index.search(queries, k, params=base)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(self.search_params.get("k_factor", 1))
        params.base_index_params = base
        return self.index.search(queries, k, params=params)

    def _storage_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Item ids in storage order and the order that sorts them (cached until the index changes)."""
        if self._slots is None:
            held = index_ids(self.index)
            self._slots = (held, np.argsort(held, kind="stable"))
        return self._slots

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Storage positions of the given item ids (ids the index does not hold are skipped)."""
        held, order = self._storage_ids()
        if not len(held):
            return np.empty(0, np.int64)
        where = np.minimum(np.searchsorted(held, ids, sorter=order), len(held) - 1)
        found = held[order[where]] == ids
        return np.sort(order[where[found]]).astype(np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under item ids (the index must be trained)."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
            self._slots = None

    def remove(self, ids: np.ndarray) -> None:
        """Delete item ids: really for `flat`, as tombstones otherwise."""
        ids = np.ascontiguousarray(ids, np.int64)
        if not len(ids):
            return
        if self.kind == "flat":
            self.index.remove_ids(ids)
            self._slots = None
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
        self._slots = None
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
