"""`retrieval index build`: embeddings → item store + one tuned FAISS index per modality + manifest."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import UserError
from retrieval.index.collection import Collection
from retrieval.index.factory import (
    KINDS,
    MIN_IVFPQ_ITEMS,
    choose_kind,
    default_params,
    factory_string,
    new_index,
    train_and_add,
)
from retrieval.index.io import write_index
from retrieval.index.manifest import IMAGES, MANIFEST, STORE, CollectionInfo, Manifest, write_manifest
from retrieval.index.tune import TARGET_RECALL, make_probe, tune
from retrieval.store import MODALITIES, ItemStore, NewItem, utc_now

if TYPE_CHECKING:
    from retrieval.embed import Embedded

log = logging.getLogger(__name__)

INSERT_CHUNK = 10_000


def build_index(
    out: str | Path,
    embedded: Embedded,
    kind: str = "auto",
    target_recall: float = TARGET_RECALL,
    params: dict[str, Any] | None = None,
    memory_budget: int | None = None,
    model_info: dict[str, Any] | None = None,
    force: bool = False,
    seed: int = 0,
) -> Manifest:
    """Write INDEX_DIR `out` from a finished embeddings folder; returns its manifest.

    `kind`: auto | flat | hnsw | ivfpq, per modality (an empty modality, or one too small to train IVF-PQ,
    is flat). `params`
    override the kind's build parameters (M, efConstruction, nlist, pq_m, nbits, refine).
    """
    if kind != "auto" and kind not in KINDS:
        raise UserError(f"--kind must be auto, {', '.join(KINDS)}; got {kind!r}")
    out = Path(out)
    _prepare_dir(out, force)
    store = ItemStore(out / STORE, dim=embedded.dim, create=True)
    store.set_info("fingerprint", embedded.fingerprint)
    image_ids, text_ids = _fill_store(store, embedded)
    store.close()

    vectors = {"image": embedded.image_vectors, "text": embedded.text_vectors}
    ids = {"image": image_ids, "text": text_ids}
    collections: dict[str, CollectionInfo] = {}
    for modality in MODALITIES:
        other = vectors["text" if modality == "image" else "image"]
        collections[modality] = _build_collection(
            out, modality, vectors[modality], ids[modality], other, kind, params or {}, target_recall, memory_budget, seed
        )
    now = utc_now()
    manifest = Manifest(
        fingerprint=embedded.fingerprint,
        dim=embedded.dim,
        created=now,
        updated=now,
        collections=collections,
        target_recall=target_recall,
        model=dict(model_info or {}),
    )
    write_manifest(out, manifest)
    return manifest


def _prepare_dir(out: Path, force: bool) -> None:
    """A new or empty folder; `force` replaces an existing index (only the files an index consists of)."""
    if (out / MANIFEST).exists() or (out / STORE).exists():
        if not force:
            raise UserError(f"{out} already holds an index; use --force to replace it")
        for name in (MANIFEST, STORE, f"{STORE}-wal", f"{STORE}-shm", *(f"{m}.faiss" for m in MODALITIES)):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / IMAGES, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _fill_store(store: ItemStore, embedded: Embedded) -> tuple[np.ndarray, np.ndarray]:
    """Insert images then texts (a caption's metadata gets `image_id`, the store id of its image)."""
    image_ids: list[int] = []
    for start in range(0, len(embedded.images), INSERT_CHUNK):
        entries = embedded.images[start : start + INSERT_CHUNK]
        rows = embedded.image_vectors[start : start + INSERT_CHUNK]
        image_ids += store.add(
            [NewItem("image", vec, e.caption, e.uri, e.metadata) for e, vec in zip(entries, rows, strict=True)]
        )
    text_ids: list[int] = []
    for start in range(0, len(embedded.texts), INSERT_CHUNK):
        entries = embedded.texts[start : start + INSERT_CHUNK]
        rows = embedded.text_vectors[start : start + INSERT_CHUNK]
        items = []
        for entry, vec in zip(entries, rows, strict=True):
            meta = dict(entry.metadata)
            if entry.image is not None:
                meta["image_id"] = image_ids[entry.image]
            items.append(NewItem("text", vec, entry.text, None, meta))
        text_ids += store.add(items)
    return np.asarray(image_ids, np.int64), np.asarray(text_ids, np.int64)


def _build_collection(
    out: Path,
    modality: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    other: np.ndarray,
    kind: str,
    overrides: dict[str, Any],
    target_recall: float,
    memory_budget: int | None,
    seed: int,
) -> CollectionInfo:
    """Build, tune and write one modality's index."""
    n, dim = vectors.shape
    if n == 0:
        chosen = "flat"
    elif kind == "ivfpq" and n < MIN_IVFPQ_ITEMS:
        log.warning("%s: %d vectors are too few to train IVF-PQ (needs %d); using flat", modality, n, MIN_IVFPQ_ITEMS)
        chosen = "flat"
    elif kind == "auto":
        chosen = choose_kind(n, dim) if memory_budget is None else choose_kind(n, dim, memory_budget)
    else:
        chosen = kind
    params = {**default_params(chosen, n, dim), **{k: v for k, v in overrides.items() if k in default_params(chosen, n, dim)}}
    index = new_index(chosen, dim, params)
    log.info("%s: %d vectors → %s", modality, n, factory_string(chosen, params))
    train_and_add(index, chosen, np.asarray(vectors, np.float32), ids, seed)
    collection = Collection(modality, index, chosen, {})
    search_params: dict[str, Any] = {}
    recall = 1.0  # exact search is its own reference
    if chosen != "flat":
        probe = make_probe(vectors, ids, other if len(other) else None, seed=seed)
        search_params, recall = tune(collection, probe, target_recall)
    write_index(collection.index, out / f"{modality}.faiss")
    return CollectionInfo(
        kind=chosen,
        factory=factory_string(chosen, params),
        build_params=params,
        search_params=search_params,
        count=int(n),
        recall_at_10=round(float(recall), 4),
        file=f"{modality}.faiss",
    )
