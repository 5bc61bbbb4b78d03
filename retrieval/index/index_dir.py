"""An opened INDEX_DIR at run time: manifest + item store + one live FAISS index per modality.

Write path (durability): an add commits its rows to the store first and only then touches FAISS; a
delete commits first too. The FAISS files are snapshots (`snapshot()`, atomic) that may lag behind;
opening the folder reconciles each index with the store (adds what is missing, drops what was
deleted), so a kill -9 at any moment loses no acknowledged item and never leaves a half-written file.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.errors import UserError
from retrieval.index.backend import save_upload
from retrieval.index.budget import kind_bytes
from retrieval.index.collection import Collection
from retrieval.index.factory import index_ids
from retrieval.index.filters import MetadataFilter
from retrieval.index.image_files import ImageFiles, roots_of
from retrieval.index.io import atomic_write_bytes, read_index, remove_stale_temps, serialize
from retrieval.index.manifest import IMAGES, STORE, CollectionInfo, Manifest, read_manifest, write_manifest
from retrieval.index.ondisk import (
    DiskCollection,
    check_free_space,
    generation_files,
    generation_of,
    lists_bytes,
    remove_unreferenced,
    write_generation,
)
from retrieval.index.writer_lock import WriterLock
from retrieval.store import MODALITIES, Item, ItemStore, NewItem, utc_now

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.05  # ondisk: compact once the delta plus tombstones exceed this share of the base
COMPACT_MIN_CHANGES = 10_000  # ... and at least this many (a small index is not rewritten for every add)


class ReadOnlyIndexError(Exception):
    """A write on an index opened memory-mapped."""


@dataclass
class Hit:
    """One search result."""

    item: Item
    score: float


class IndexDir:
    """Search, add and delete over an index folder; thread-safe (FAISS is guarded by one lock)."""

    def __init__(self, path: str | Path, mmap: bool = False, fingerprint: str | None = None) -> None:
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        if fingerprint is not None and fingerprint != self.manifest.fingerprint:
            raise UserError(
                f"index {self.path} was built by model {self.manifest.fingerprint}, but the checkpoint is model "
                f"{fingerprint}: rebuild the index with this checkpoint (`retrieval index build`)"
            )
        self.read_only = mmap
        self._lock = threading.Lock()  # FAISS: adds and removes must not overlap searches
        self._snapshot_lock = threading.Lock()
        self._writes = threading.Lock()  # store commit + index update in commit order (ondisk watermarks rely on it)
        self._dirty = False
        # A replica never writes (and a `.tmp` file may be the primary's write in progress); the writer holds
        # the folder's lock before it deletes temp files, so they cannot be another live writer's.
        self._writer_lock = None if mmap else WriterLock(self.path)
        try:
            if not mmap:
                for stale in remove_stale_temps(self.path) + remove_stale_temps(self.path / IMAGES):
                    log.info("removed an unfinished temp file: %s", stale)
            self.store = ItemStore(self.path / STORE, dim=self.manifest.dim, read_only=mmap)
            roots = self.manifest.image_roots
            if roots is None:  # built before the roots were recorded: the folders of the build's own items
                roots = roots_of(self.store.absolute_uris("image"))
            self.image_files = ImageFiles(self.path, roots)
            self.collections = {m: self._open(m, mmap) for m in MODALITIES}
            self._counts = {m: self.store.count(m) for m in MODALITIES}
            self.filters = MetadataFilter(self.store)
        except BaseException:
            if self._writer_lock is not None:
                self._writer_lock.release()
            raise

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def _open(self, modality: str, mmap: bool) -> Collection:
        """Load one snapshot and reconcile it with the store (re-written at once if it lagged)."""
        info = self.manifest.collections[modality]
        path = self.path / info.file
        if not path.is_file():
            raise UserError(f"{path} not found: the index folder is incomplete")
        if info.kind == "ondisk":
            return self._open_ondisk(modality, info)
        store_ids = self.store.ids(modality)
        index = read_index(path, mmap=mmap)
        held = index_ids(index)
        in_sync = len(held) == len(store_ids) and np.array_equal(np.sort(held), store_ids)
        if not in_sync and mmap:
            index = read_index(path)  # a memory-mapped index cannot take the missing items
        collection = Collection(modality, index, info.kind, info.search_params)
        if not in_sync:
            changes = collection.reconcile(store_ids, self.store.embeddings_of)
            log.info("%s index reconciled with the store: %s", modality, changes)
            if mmap:  # a replica: in memory only, the primary writes the snapshot
                return collection
            self._write_snapshot(modality, serialize(collection.index))
            info.count = len(store_ids)
            self.manifest.updated = utc_now()
            write_manifest(self.path, self.manifest)
        return collection

    def _open_ondisk(self, modality: str, info: CollectionInfo) -> DiskCollection:
        """Map the base generation, replay the store's newer rows into the delta and its newer deletions as
        tombstones (cost: the changes since the last compaction, not the collection)."""
        if not self.read_only:
            remove_unreferenced(self.path, modality, info.file)
        collection = DiskCollection(modality, self.path, info.file, info.search_params)
        collection.seen_id = int(info.max_id or 0)
        collection.seen_deletion = int(info.deletions_seq)
        self._replay(collection)
        log.info("%s: base %d vectors (%s), %d newer items replayed from the store, %d tombstones", modality,
                 collection.index.ntotal, info.file, collection.delta.ntotal, len(collection.tombstones))
        return collection

    def _replay(self, collection: DiskCollection) -> None:
        """Bring an ondisk collection up to the store: rows above `seen_id`, deletions after `seen_deletion`.

        The deletions are read after the rows, so a row deleted in between was added and must be tombstoned: the
        deletions are cut at the new watermark `newest`, not the old one (ids above it were never added)."""
        newest = max(collection.seen_id, self.store.last_id())
        for ids, vectors in self.store.iter_embeddings(collection.modality, after=collection.seen_id):
            collection.add(vectors[ids <= newest], ids[ids <= newest])
        collection.seen_id = newest
        dead, collection.seen_deletion = self.store.deletions_since(collection.modality, collection.seen_deletion)
        collection.remove(dead[dead <= newest])

    def refresh(self) -> None:
        """Read-only replicas: follow the primary's writes (new rows and deletions in the shared store) and
        its compactions (a new generation named in the manifest)."""
        manifest = read_manifest(self.path)
        for modality, info in manifest.collections.items():
            current = self.collections[modality]
            if not isinstance(current, DiskCollection):
                continue
            if info.file != current.file:
                self.manifest.collections[modality] = info
                fresh = self._open_ondisk(modality, info)
                with self._lock:
                    self.collections[modality] = fresh
                continue
            with self._lock:
                self._replay(current)
        self._counts = {m: self.store.count(m) for m in MODALITIES}

    def search(
        self, modality: str, queries: np.ndarray, k: int, wait: bool = True, allowed: np.ndarray | None = None
    ) -> list[list[Hit]] | None:
        """Top-k items of `modality` for each query row (normalised (n, D) float32), best first; equal scores
        in id order, so that pages cut from the same ranking never overlap.

        `allowed`: restrict the results to these item ids (sorted; from `matching`). `wait=False` returns None
        instead of waiting while a write or snapshot holds the index (for callers on an event loop, which
        then search from a worker thread).
        """
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            scores, ids = self.collections[modality].search(queries, k, allowed)
        finally:
            self._lock.release()
        items = self.store.get([int(i) for i in ids.reshape(-1) if i >= 0])
        return [
            sorted(
                (Hit(items[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and int(i) in items),
                key=lambda hit: (-hit.score, hit.item.id),
            )
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def matching(self, modality: str, spec: dict[str, Any]) -> np.ndarray:
        """Sorted ids of the `modality` items whose metadata satisfies a filter (see `retrieval.index.filters`)."""
        return self.filters.matching(modality, spec)

    def listing(self, modality: str | None, spec: dict[str, Any] | None, offset: int, limit: int) -> tuple[list[Item], int]:
        """One page of items in id order (of a modality or all, optionally filtered) and how many there are."""
        if not spec:
            return self.store.page(modality, offset, limit), self.store.count(modality)
        ids = np.sort(np.concatenate([self.matching(m, spec) for m in ((modality,) if modality else MODALITIES)]))
        found = self.store.get([int(i) for i in ids[offset : offset + limit]])
        return [found[int(i)] for i in ids[offset : offset + limit] if int(i) in found], len(ids)

    def update_metadata(self, item_id: int, changes: dict[str, Any]) -> Item | None:
        """Merge metadata changes into an item (None removes a key), committed; None when there is no such id."""
        if self.read_only:
            raise ReadOnlyIndexError("the index is memory-mapped read-only (started with mmap); writes are disabled")
        item = self.store.update_metadata(item_id, changes)
        if item is not None:
            self.filters.update(item.modality, removed=[item_id], added=[(item_id, item.metadata)])
        return item

    def add(self, items: list[NewItem]) -> list[int]:
        """Store (committed) then index items; returns their ids once both are done."""
        if self.read_only:
            raise ReadOnlyIndexError("the index is memory-mapped read-only (started with mmap); writes are disabled")
        with self._writes:
            return self._add(items)

    def _add(self, items: list[NewItem]) -> list[int]:
        ids = self.store.add(items)
        for modality in MODALITIES:
            self.filters.update(modality, added=[(i, it.metadata) for i, it in zip(ids, items, strict=True)
                                                 if it.modality == modality])
        with self._lock:
            for modality in MODALITIES:
                rows = [n for n, item in enumerate(items) if item.modality == modality]
                if rows:
                    vectors = np.stack([items[n].embedding for n in rows]).astype(np.float32)
                    self.collections[modality].add(vectors, np.asarray([ids[n] for n in rows], np.int64))
                    self._counts[modality] += len(rows)
            self._dirty = True
        return ids

    def delete(self, item_id: int) -> Item | None:
        """Remove an item from the store (committed) and the index; None when there is no such id."""
        if self.read_only:
            raise ReadOnlyIndexError("the index is memory-mapped read-only (started with mmap); writes are disabled")
        with self._writes:
            item = self.store.delete(item_id)
            if item is None:
                return None
            self.filters.update(item.modality, removed=[item_id])
            with self._lock:
                self.collections[item.modality].remove(np.asarray([item_id], np.int64))
                self._counts[item.modality] -= 1
                self._dirty = True
        return item

    def get(self, item_id: int) -> Item | None:
        """One stored item."""
        return self.store.get([item_id]).get(item_id)

    def counts(self) -> dict[str, int]:
        """Live items per modality."""
        return dict(self._counts)

    def save_image(self, data: bytes, suffix: str) -> str:
        """Keep uploaded image bytes under images/ (atomic, content-addressed); returns the item uri."""
        return save_upload(self.path, data, suffix)

    def image_path(self, item: Item) -> Path | None:
        """The image file this index may serve for an item (see `ImageFiles`), or None: an external uri."""
        return self.image_files.path(item.uri) if item.modality == "image" else None

    def snapshot(self, force: bool = False) -> bool:
        """Write the FAISS files and manifest if anything changed since the last snapshot."""
        if self.read_only:
            return False
        with self._snapshot_lock:
            with self._lock:
                if not (self._dirty or force):
                    return False
                blobs = {m: serialize(c.index) for m, c in self.collections.items() if not isinstance(c, DiskCollection)}
                counts = dict(self._counts)
                self._dirty = False
            for modality, blob in blobs.items():
                self._write_snapshot(modality, blob)
            for modality, count in counts.items():
                self.manifest.collections[modality].count = count
            self.manifest.updated = utc_now()
            write_manifest(self.path, self.manifest)
        for modality, collection in self.collections.items():
            if isinstance(collection, DiskCollection) and self._needs_compaction(collection):
                self.compact(modality)
        return True

    @staticmethod
    def _needs_compaction(collection: DiskCollection) -> bool:
        changes = collection.delta.ntotal + len(collection.tombstones)
        return changes >= max(COMPACT_MIN_CHANGES, COMPACT_FRACTION * collection.index.ntotal)

    def compact(self, modality: str) -> dict[str, Any]:
        """ondisk: write the next generation (base + delta − tombstones) while searches go on, then swap it in.

        Only the freeze and the swap hold the index lock (milliseconds); adds arriving meanwhile go to a fresh
        delta. Returns what was merged and how long it took."""
        if self.read_only:
            raise ReadOnlyIndexError("the index is memory-mapped read-only (started with mmap); writes are disabled")
        collection = self.collections[modality]
        if not isinstance(collection, DiskCollection):
            raise UserError(f"{modality}: only the ondisk kind is compacted (other kinds rebuild at start-up)")
        start = time.perf_counter()
        with self._writes, self._lock:
            sources, dead = collection.freeze()
            # Writes are held, so every committed item is in base or delta, every deletion a tombstone.
            watermark = self.store.last_id()
            seen_deletion = self.store.deletions_since(modality, 2**62)[1]
            old = collection.file
        merged = sum(s.ntotal for s in sources)
        try:
            check_free_space(self.path, lists_bytes(merged, collection.trained), f"compacting the {modality} index")
            file = write_generation(self.path, modality, generation_of(old) + 1, collection.trained, sources, dead)
        except BaseException:
            with self._lock:
                collection.abort()
            raise
        del sources
        with self._lock:
            collection.swap(file, dead)
            collection.seen_id, collection.seen_deletion = watermark, seen_deletion
            info = self.manifest.collections[modality]
            info.file, info.max_id, info.deletions_seq = file, watermark, seen_deletion
            info.count = self._counts[modality]
            self.manifest.updated = utc_now()
            write_manifest(self.path, self.manifest)
        for name in generation_files(modality, generation_of(old)):
            (self.path / name).unlink(missing_ok=True)
        report = {"modality": modality, "vectors": int(collection.index.ntotal), "dropped": len(dead),
                  "seconds": round(time.perf_counter() - start, 2), "file": file}
        log.info("compacted: %s", report)
        return report

    def _write_snapshot(self, modality: str, blob: np.ndarray) -> None:
        atomic_write_bytes(self.path / self.manifest.collections[modality].file, blob)

    def resident_bytes(self) -> int:
        """What the indexes need in RAM for full speed (ondisk: the list files, mapped; see `budget`)."""
        total = 0
        for modality, collection in self.collections.items():
            if isinstance(collection, DiskCollection):
                lists = generation_files(modality, generation_of(collection.file))[1]
                code_size = faiss.extract_index_ivf(collection.delta).code_size
                total += (self.path / lists).stat().st_size + collection.delta.ntotal * (code_size + 8)
            else:
                total += kind_bytes(collection.kind, self._counts[modality], self.dim)
        return total

    def info(self) -> dict[str, Any]:
        """What `/v1/info` reports about the index."""
        return {
            "fingerprint": self.manifest.fingerprint,
            "dim": self.dim,
            "metric": self.manifest.metric,
            "read_only": self.read_only,
            "indexes": {
                m: {
                    "kind": c.kind,
                    "count": self._counts[m],
                    "search_params": c.search_params,
                    "recall_at_10": self.manifest.collections[m].recall_at_10,
                    "deleted_pending_rebuild": len(c.tombstones),
                    **({"delta": c.delta.ntotal, "file": c.file} if isinstance(c, DiskCollection) else {}),
                }
                for m, c in self.collections.items()
            },
        }

    def close(self) -> None:
        """Snapshot pending changes and close the store. A snapshot that cannot be written (a full disk) is only
        logged: the store holds every item, and the next start reconciles the FAISS files with it."""
        try:
            self.snapshot()
        except OSError as err:
            log.warning("final index snapshot not written (%s); the next start rebuilds it from the store", err)
        finally:
            self.store.close()
            if self._writer_lock is not None:
                self._writer_lock.release()
