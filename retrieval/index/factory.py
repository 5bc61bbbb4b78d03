"""Which FAISS index for a collection, and how to build it: thin helpers over `faiss.index_factory`.

Every index is inner-product (embeddings are L2-normalised, so IP = cosine) and wrapped in `IDMap2`,
so FAISS returns the item store's ids. Kinds:

- `flat`  — exact search; deletions are real (`remove_ids`).
- `hnsw`  — `HNSW{M},Flat`: graph search tuned by `efSearch`; HNSW cannot remove, so deleted ids are
  filtered at search time (an `IDSelector`) and dropped for good when the index is rebuilt.
- `ivfpq` — `IVF{nlist},PQ{m}x8,Refine(SQ8)`: coarse clusters + product-quantised codes, then the
  `k_factor·k` best candidates re-scored from 8-bit scalar-quantised vectors (without that refine step
  PQ alone cannot reach recall@10 ≥ 0.98 against exact search). Deletions are filtered like HNSW.

`auto` follows autofaiss' reasoning: exact search while it is cheap, HNSW while its graph fits the
memory budget, compressed IVF-PQ beyond.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from retrieval.errors import UserError
from retrieval.index.budget import FLAT_MAX_ITEMS, HNSW_M, choose_kind, nlist_for, ondisk_codes

__all__ = ["FLAT_MAX_ITEMS", "KINDS", "choose_kind", "default_params", "factory_string", "new_index"]

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivfpq", "ondisk")
MIN_IVFPQ_ITEMS = 1_000  # PQ codebooks (256 centroids per sub-quantizer) need this many training vectors
HNSW_EF_CONSTRUCTION = 80
DEFAULT_MEMORY_BUDGET = 8 << 30  # bytes of RAM `auto` lets an index take when no --memory-budget is given


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    """Approximate HNSW memory: float vectors + ~2·M level-0 links (int32) + the id map."""
    return n * (4 * dim + 8 * m + 8)


def default_params(kind: str, n: int, dim: int, memory_budget: int | None = None) -> dict[str, Any]:
    """Build parameters for a kind, sized for `n` vectors of `dim` dimensions (`ondisk`: codes that fit the
    memory budget)."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind == "ivfpq":
        # nlist ≈ 4·√n rounded to a power of two (autofaiss), but at least 39 training points per list.
        nlist = nlist_for(n)
        pq_m = next((m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if m <= max(1, dim // 4) and dim % m == 0), 1)
        return {"nlist": nlist, "pq_m": pq_m, "nbits": 8, "refine": "SQ8"}
    if kind == "ondisk":
        return {"nlist": nlist_for(n), "codes": ondisk_codes(n, dim, memory_budget)}
    raise UserError(f"unknown index kind {kind!r}: use auto, {', '.join(KINDS)}")


def factory_string(kind: str, params: dict[str, Any]) -> str:
    """The `faiss.index_factory` description of a kind (recorded in the manifest)."""
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return f"IDMap2,HNSW{params['M']},Flat"
    if kind == "ivfpq":
        refine = f",Refine({params['refine']})" if params.get("refine") else ""
        return f"IDMap2,IVF{params['nlist']},PQ{params['pq_m']}x{params['nbits']}{refine}"
    if kind == "ondisk":  # no IDMap2: IVF lists store the item ids themselves (no 48 B/vector id maps in RAM)
        return f"IVF{params['nlist']}_HNSW{HNSW_M},{params['codes']}"
    raise UserError(f"unknown index kind {kind!r}: use auto, {', '.join(KINDS)}")


def new_index(kind: str, dim: int, params: dict[str, Any]) -> faiss.IndexIDMap2:
    """An empty (untrained) inner-product index of `kind`, wrapped in IDMap2."""
    index = faiss.index_factory(dim, factory_string(kind, params), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        inner(index).hnsw.efConstruction = int(params["efConstruction"])
    if kind in ("ivfpq", "ondisk"):
        # Polysemous code ordering only serves Hamming-threshold search, which we do not use, and its
        # annealing dominates training time (seconds per sub-quantizer).
        ivf = faiss.downcast_index(ivf_of(index))
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.do_polysemous_training = False
        if kind == "ondisk":
            ivf.cp.niter = 10  # k-means on millions of points: 10 iterations reach nearly the same recall as 25
    return index


def inner(index: faiss.Index) -> faiss.Index:
    """The index inside the IDMap2 wrapper, downcast to its real class (HNSW, Refine, Flat)."""
    return faiss.downcast_index(faiss.downcast_index(index).index)


def ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    """The IVF layer of an `ivfpq` index (below the refine step), as its real class (IndexIVFPQ)."""
    if not isinstance(faiss.downcast_index(index), faiss.IndexIDMap2):
        return faiss.extract_index_ivf(index)
    core = inner(index)
    if isinstance(core, faiss.IndexRefine):
        core = faiss.downcast_index(core.base_index)
    return faiss.downcast_index(faiss.extract_index_ivf(core))


def train_and_add(index: faiss.Index, kind: str, vectors: np.ndarray, ids: np.ndarray, seed: int = 0) -> None:
    """Train (IVF-PQ: on a sample) and add `vectors` under `ids`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not index.is_trained:
        if len(vectors) < MIN_IVFPQ_ITEMS:
            raise UserError(f"index kind {kind} needs at least {MIN_IVFPQ_ITEMS} vectors, got {len(vectors)}: use flat")
        nlist = ivf_of(index).nlist
        n_train = min(len(vectors), max(10_000, 40 * nlist))
        sample = np.random.default_rng(seed).choice(len(vectors), n_train, replace=False)
        log.info("training %s on %d vectors", kind, n_train)
        index.train(vectors[np.sort(sample)])
    for start in range(0, len(vectors), 100_000):
        index.add_with_ids(vectors[start : start + 100_000], np.ascontiguousarray(ids[start : start + 100_000], np.int64))


def set_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    """Apply tuned search parameters to the index objects themselves (the no-filter fast path); keys
    left out keep FAISS's defaults."""
    if kind == "hnsw" and "efSearch" in params:
        inner(index).hnsw.efSearch = int(params["efSearch"])
    if kind in ("ivfpq", "ondisk") and "nprobe" in params:
        ivf_of(index).nprobe = int(params["nprobe"])
    if kind == "ondisk":
        # The HNSW coarse quantizer must explore at least nprobe centroids to return nprobe good lists.
        quantizer = faiss.downcast_index(ivf_of(index).quantizer)
        quantizer.hnsw.efSearch = max(64, 2 * int(params.get("nprobe", 1)))
        return
    core = inner(index)
    if kind == "ivfpq" and "k_factor" in params and isinstance(core, faiss.IndexRefine):
        core.k_factor = float(params["k_factor"])


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids an IDMap2 index holds, in storage order (int64 copy)."""
    return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64, copy=False)
