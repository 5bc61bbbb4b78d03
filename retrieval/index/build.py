"""`retrieval index build`: embeddings → item store + one tuned FAISS index per modality + manifest."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from retrieval.errors import UserError
from retrieval.index import ondisk
from retrieval.index.budget import format_bytes, kind_bytes
from retrieval.index.collection import Collection
from retrieval.index.factory import (
    DEFAULT_MEMORY_BUDGET,
    KINDS,
    MIN_IVFPQ_ITEMS,
    choose_kind,
    default_params,
    factory_string,
    new_index,
    train_and_add,
)
from retrieval.index.image_files import roots_of
from retrieval.index.io import fsync_dir, write_index
from retrieval.index.manifest import IMAGES, MANIFEST, STORE, CollectionInfo, Manifest, write_manifest
from retrieval.index.tune import TARGET_RECALL, make_probe, tune
from retrieval.index.writer_lock import WriterLock
from retrieval.store import MODALITIES, ItemStore, storage_full, utc_now

if TYPE_CHECKING:
    from retrieval.embed import Embedded

log = logging.getLogger(__name__)

INSERT_CHUNK = 50_000
STAGING = ".staging"  # a build writes here and moves its files into INDEX_DIR only once everything is written


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
    progress: bool = False,
) -> Manifest:
    """Write INDEX_DIR `out` from a finished embeddings folder; returns its manifest.

    `kind`: auto | flat | hnsw | ivfpq | ondisk, per modality (an empty modality, or one too small to train
    an IVF index, is flat); `auto` picks from the sizes and `memory_budget` (bytes the serving index may
    keep in RAM). `params` override the kind's build parameters (M, efConstruction, nlist, pq_m, nbits,
    refine, codes). Everything is written to INDEX_DIR/.staging first and moved into place at the end, so a
    build that fails (a full disk) or is interrupted leaves an existing index in `out` as it was.
    """
    if kind != "auto" and kind not in KINDS:
        raise UserError(f"--kind must be auto, {', '.join(KINDS)}; got {kind!r}")
    out = Path(out)
    if ((out / MANIFEST).exists() or (out / STORE).exists()) and not force:
        raise UserError(f"{out} already holds an index; use --force to replace it")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    vectors = {"image": embedded.image_vectors, "text": embedded.text_vectors}
    kinds = {m: _kind_for(m, kind, len(vectors[m]), embedded.dim, budget) for m in MODALITIES}
    out.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):  # a service writing `out`, or a second build, must not see its files swapped
        stage = out / STAGING
        try:
            shutil.rmtree(stage, ignore_errors=True)  # what an earlier, interrupted build left
            stage.mkdir()
            _check_disk(stage, embedded, kinds)
            manifest = _build(stage, embedded, vectors, kinds, params or {}, target_recall, budget, model_info, seed, progress)
            _move_into_place(stage, out, manifest)
        except KeyboardInterrupt:
            shutil.rmtree(stage, ignore_errors=True)
            raise UserError(f"interrupted before the build finished: {out} is as it was (partial files removed)") from None
        except (OSError, sqlite3.Error) as err:
            shutil.rmtree(stage, ignore_errors=True)
            if storage_full(err):
                raise UserError(f"the disk holding {out} is full: the build stopped and {out} is as it was (partial "
                                f"files removed); free space and run it again") from None
            raise
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return manifest


def _kind_for(modality: str, kind: str, n: int, dim: int, budget: int) -> str:
    if n == 0:
        return "flat"
    if kind in ("ivfpq", "ondisk") and n < MIN_IVFPQ_ITEMS:
        log.warning("%s: %d vectors are too few to train an IVF index (needs %d); using flat", modality, n, MIN_IVFPQ_ITEMS)
        return "flat"
    if kind == "auto":
        return choose_kind(n, dim, budget)
    if kind != "ondisk" and kind_bytes(kind, n, dim) > budget:
        log.warning("%s: a %s index of %d vectors needs about %s, over the memory budget %s", modality, kind, n,
                    format_bytes(kind_bytes(kind, n, dim)), format_bytes(budget))
    return kind


def _check_disk(stage: Path, embedded: Embedded, kinds: dict[str, str]) -> None:
    """Refuse up front when the folder's disk cannot take the store and the indexes."""
    n = len(embedded.image_vectors) + len(embedded.text_vectors)
    needed = n * (4 * embedded.dim + 160)  # store rows: embedding + caption, uri, metadata, b-tree overhead
    for modality, kind in kinds.items():
        count = len(embedded.image_vectors if modality == "image" else embedded.text_vectors)
        needed += kind_bytes(kind, count, embedded.dim) * (2 if kind == "ondisk" else 1)  # ondisk: shards + merge
    ondisk.check_free_space(stage, needed, "the index build")


def _build(stage: Path, embedded: Embedded, vectors: dict[str, np.ndarray], kinds: dict[str, str],
           overrides: dict[str, Any], target_recall: float, budget: int, model_info: dict[str, Any] | None,
           seed: int, progress: bool) -> Manifest:
    store = ItemStore(stage / STORE, dim=embedded.dim, create=True)
    try:
        store.set_info("fingerprint", embedded.fingerprint)
        ids = _fill_store(store, embedded, progress)
        watermark = store.last_id()
    finally:
        store.close()
    collections: dict[str, CollectionInfo] = {}
    for modality in MODALITIES:
        other = vectors["text" if modality == "image" else "image"]
        collections[modality] = _build_collection(
            stage, modality, vectors[modality], ids[modality], other, kinds[modality], overrides, target_recall,
            budget, seed, progress,
        )
        if kinds[modality] == "ondisk":
            collections[modality].max_id = watermark
    now = utc_now()
    return Manifest(
        fingerprint=embedded.fingerprint,
        dim=embedded.dim,
        created=now,
        updated=now,
        collections=collections,
        target_recall=target_recall,
        model=dict(model_info or {}),
        image_roots=roots_of(entry.uri for entry in embedded.images),
    )


def _move_into_place(stage: Path, out: Path, manifest: Manifest) -> None:
    """Replace the old index's files with the staged ones; the manifest goes first (an index without it is
    refused, never half-read) and comes back last."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in (STORE, f"{STORE}-wal", f"{STORE}-shm"):
        (out / name).unlink(missing_ok=True)
    for old in out.glob("*.faiss"):
        old.unlink()
    for old in out.glob("*.ivfdata"):
        old.unlink()
    shutil.rmtree(out / IMAGES, ignore_errors=True)
    for path in stage.iterdir():
        os.replace(path, out / path.name)
    stage.rmdir()
    fsync_dir(out)
    write_manifest(out, manifest)


def _fill_store(store: ItemStore, embedded: Embedded, progress: bool) -> dict[str, np.ndarray]:
    """Insert images then texts in bulk (a caption's metadata gets `image_id`, the store id of its image)."""
    total = len(embedded.images) + len(embedded.texts)
    bar = tqdm(total=total, desc="store items", unit="item", unit_scale=True, disable=not progress)
    image_ids = []
    for start in range(0, len(embedded.images), INSERT_CHUNK):
        entries = embedded.images[start : start + INSERT_CHUNK]
        image_ids.append(store.add_rows("image", embedded.image_vectors[start : start + INSERT_CHUNK],
                                        [e.caption for e in entries], [e.uri for e in entries],
                                        [e.metadata for e in entries]))
        bar.update(len(entries))
    images = np.concatenate(image_ids) if image_ids else np.empty(0, np.int64)
    text_ids = []
    for start in range(0, len(embedded.texts), INSERT_CHUNK):
        entries = embedded.texts[start : start + INSERT_CHUNK]
        metadata = [
            {**e.metadata, "image_id": int(images[e.image])} if e.image is not None else dict(e.metadata) for e in entries
        ]
        text_ids.append(store.add_rows("text", embedded.text_vectors[start : start + INSERT_CHUNK],
                                       [e.text for e in entries], [None] * len(entries), metadata))
        bar.update(len(entries))
    bar.close()
    return {"image": images, "text": np.concatenate(text_ids) if text_ids else np.empty(0, np.int64)}


def _build_collection(
    folder: Path,
    modality: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    other: np.ndarray,
    chosen: str,
    overrides: dict[str, Any],
    target_recall: float,
    budget: int,
    seed: int,
    progress: bool,
) -> CollectionInfo:
    """Build, tune and write one modality's index."""
    n, dim = vectors.shape
    defaults = default_params(chosen, n, dim, budget)
    params = {**defaults, **{k: v for k, v in overrides.items() if k in defaults}}
    log.info("%s: %d vectors → %s", modality, n, factory_string(chosen, params))
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    if chosen == "ondisk":
        file, stats["add_vectors_per_s"] = ondisk.build(folder, modality, vectors, ids, params, seed, progress)
        collection = ondisk.DiskCollection(modality, folder, file, {})
    else:
        file = f"{modality}.faiss"
        index = new_index(chosen, dim, params)
        train_and_add(index, chosen, vectors, ids, seed)
        collection = Collection(modality, index, chosen, {})
    stats["build_s"] = round(time.perf_counter() - start, 2)
    search_params: dict[str, Any] = {}
    recall = 1.0  # exact search is its own reference
    if chosen != "flat":
        if not len(other):
            log.warning("%s: no %s vectors to tune with: the %s index is tuned on %s→%s queries only, and "
                        "cross-modal recall can fall well below the target (docs/scale.md); "
                        "embed sample queries with the collection (`retrieval embed --image-dir … --text-file …`)",
                        modality, "text" if modality == "image" else "image", modality, modality, modality)
        probe = make_probe(vectors, ids, other if len(other) else None, seed=seed)
        search_params, recall = tune(collection, probe, target_recall)
    if chosen != "ondisk":
        write_index(collection.index, folder / file)
    stats["total_s"] = round(time.perf_counter() - start, 2)
    return CollectionInfo(
        kind=chosen,
        factory=factory_string(chosen, params),
        build_params=params,
        search_params=search_params,
        count=int(n),
        recall_at_10=round(float(recall), 4),
        file=file,
        build_stats=stats,
    )
