"""What the routes delegate to: the encoder behind two batchers, the index folder, periodic snapshots.

Created once (`load_engine`, synchronous: model + index + fingerprint check), started inside the app's
lifespan (batchers and the snapshot task need the running event loop) and stopped at shutdown (pending
index changes are written). The index is either backend (`retrieval.index.backend.open_index`); an index
engine that cannot answer (a Milvus down or over its timeout) makes the request a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
from fastapi import HTTPException

from retrieval.errors import UserError
from retrieval.index import Hit, IndexDir
from retrieval.index.backend import IndexUnavailable, ItemRejected, SearchIndex, open_index
from retrieval.index.budget import format_bytes, parse_bytes
from retrieval.store import Item, NewItem
from service.batching import Batcher
from service.encoder import Encoder, make_encoder
from service.images import decode_image
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

INLINE_SEARCH_MAX_K = 100


@dataclass
class Upload:
    """A decoded image upload: the model input, and the original bytes and suffix for storing it."""

    pixels: np.ndarray
    data: bytes
    suffix: str


class Engine:
    """Encoder + index + batching for one app."""

    def __init__(self, settings: Settings, encoder: Encoder, index: SearchIndex) -> None:
        self.settings = settings
        self.encoder = encoder
        self.index = index
        self.text_batcher: Batcher | None = None
        self.image_batcher: Batcher | None = None
        # Intra-op thread settings (torch's OpenMP/MKL) are per thread: each worker thread applies the
        # encoder's at start, or a fresh thread runs a 1 ms matmul on default threads in ~20 ms on busy cores.
        init = getattr(encoder, "init_thread", None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode", initializer=init)
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode", initializer=init)
        # FAISS calls run here: OpenMP's thread count is per calling thread, and a pool thread left at the
        # default (all cores) makes a single-query search spin-wait for helpers — 0.1 ms becomes ~10 ms.
        self._index_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="index",
                                              initializer=faiss.omp_set_num_threads, initargs=(1,))
        # Writes are serialised by the index anyway (one commit at a time): they get their own thread, so that a
        # burst of bulk adds never fills the index threads and queues searches behind them.
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write",
                                              initializer=faiss.omp_set_num_threads, initargs=(1,))
        self._snapshots: asyncio.Task | None = None
        # A remote index's sizes for /metrics, read again by the snapshot task (a scrape never waits on Milvus).
        self._counts: dict[str, int] = {} if isinstance(index, IndexDir) else index.counts()

    def start(self, metrics: Metrics) -> None:
        """Start batchers and the snapshot task in the running event loop."""
        s = self.settings
        faiss.omp_set_num_threads(1)  # for the searches made on the event loop's thread (see `search`)

        def batcher(name: str, fn) -> Batcher:
            made = Batcher(name, fn, self._executor, s.batch_max_size, s.batch_max_wait_ms, s.queue_size,
                           inflight=lambda: metrics.encoding_inflight, on_batch=metrics.observe_batch)
            metrics.track(name, lambda: made.depth)
            made.start()
            return made

        self.text_batcher = batcher("text", self.encoder.encode_texts)
        self.image_batcher = batcher("image", lambda pixels: self.encoder.encode_pixels(np.stack(pixels)))
        if isinstance(self.index, IndexDir):
            metrics.track_index(self.index.counts)
        else:
            metrics.track_index(lambda: self._counts)
        self._snapshots = asyncio.get_running_loop().create_task(self._snapshot_loop(), name="index-snapshots")

    async def stop(self) -> None:
        """Stop batching and snapshotting, write pending index changes, close the store."""
        if self._snapshots is not None:
            self._snapshots.cancel()
            await asyncio.gather(self._snapshots, return_exceptions=True)
        for batcher in (self.text_batcher, self.image_batcher):
            if batcher is not None:
                await batcher.stop()
        self._executor.shutdown(wait=True)
        self._write_pool.shutdown(wait=True)
        await self._on_index(self.index.close)
        self._index_pool.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)

    async def _on_index(self, fn, *args):
        """Run an index call in the index threads."""
        return await self._run(self._index_pool, fn, *args)

    async def _on_write(self, fn, *args):
        """Run an index write (add, delete, metadata change, image file) in the write thread."""
        return await self._run(self._write_pool, fn, *args)

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except IndexUnavailable as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        except ItemRejected as err:
            raise HTTPException(422, str(err)) from None

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            try:  # a replica (read-only) follows the primary instead
                await self._on_index(self.index.refresh if self.index.read_only else self.index.snapshot)
                if not isinstance(self.index, IndexDir):
                    self._counts = await self._on_index(self.index.counts)
            except Exception:  # a failed snapshot is retried next time; the store still has every item
                log.exception("index snapshot failed")

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """(n, D) embeddings and per-text truncation flags."""
        return await self.text_batcher.submit(texts), self.encoder.truncated(texts)

    async def decode(self, data: bytes, what: str) -> Upload:
        """Check, decode and preprocess one uploaded image (in a worker thread)."""

        def work() -> Upload:
            image, suffix = decode_image(data, self.settings.max_image_pixels, what)
            return Upload(self.encoder.preprocess_image(image), data, suffix)

        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, work)

    async def embed_images(self, uploads: list[Upload]) -> np.ndarray:
        """(n, D) embeddings of decoded uploads."""
        return await self.image_batcher.submit([u.pixels for u in uploads])

    def query_vector(self, embedding: list[float]) -> np.ndarray:
        """A raw query embedding, checked (dimension, finite, non-zero) and L2-normalised (422 otherwise)."""
        try:
            return unit_vector(embedding, self.index.dim)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    async def search(
        self, vector: np.ndarray, target: str, k: int, offset: int = 0, allowed: np.ndarray | None = None,
        exclude: int | None = None,
    ) -> list[Hit]:
        """Hits `offset` to `offset + k` of the ranking of `target` items for one normalised query vector.

        `allowed`: only these item ids (a filter's matches); `exclude`: an item left out (the query's own).
        A small unfiltered search (~0.1 ms for HNSW, well under a millisecond for the largest `auto` flat index)
        runs right here on the event loop when the index is free: a thread hop would cost more than the
        search. Filtered or deep searches, or an index busy with a write or snapshot, go to the index threads.
        """
        query = vector.reshape(1, -1)
        depth = offset + k + (exclude is not None)
        inline = depth <= INLINE_SEARCH_MAX_K and allowed is None
        hits = self.index.search(target, query, depth, wait=False) if inline else None
        if hits is None:
            hits = await self._on_index(self.index.search, target, query, depth, True, allowed)
        return [hit for hit in hits[0] if hit.item.id != exclude][offset : offset + k]

    async def matching(self, target: str, spec: dict) -> np.ndarray:
        """Ids of `target` items whose metadata passes a filter (a store read: in the index threads)."""
        return await self._on_index(self.index.matching, target, spec)

    async def item_vector(self, item_id: int) -> np.ndarray:
        """A stored item's embedding (404 when there is no such item)."""
        try:
            return (await self.vectors([item_id]))[0]
        except KeyError:
            raise HTTPException(404, f"no item with id {item_id}") from None

    async def vectors(self, ids: list[int]) -> np.ndarray:
        """Stored items' embeddings, (len(ids), D) (KeyError for an id that does not exist)."""
        return await self._on_index(self.index.store.embeddings_of, ids)

    async def get(self, item_id: int) -> Item | None:
        """One stored item, or None."""
        return await self._on_index(self.index.get, item_id)

    async def info(self) -> dict:
        """The index's part of `/v1/info`."""
        return await self._on_index(self.index.info)

    async def add(self, items: list[NewItem]) -> list[int]:
        """Durably add items (store commit, then index)."""
        return await self._on_write(self.index.add, items)

    async def store_image(self, upload: Upload) -> str:
        """Keep an uploaded image's bytes; returns its uri."""
        return await self._on_write(self.index.save_image, upload.data, upload.suffix)

    async def update_metadata(self, item_id: int, changes: dict) -> Item | None:
        """Durably merge metadata changes into an item."""
        return await self._on_write(self.index.update_metadata, item_id, changes)

    async def list_items(self, modality: str | None, spec: dict | None, offset: int, limit: int) -> tuple[list[Item], int]:
        """A page of stored items and the total (a store read: in the index threads)."""
        return await self._on_index(self.index.listing, modality, spec, offset, limit)

    async def delete(self, item_id: int) -> Item | None:
        """Durably delete an item."""
        return await self._on_write(self.index.delete, item_id)


def unit_vector(embedding: list[float], dim: int) -> np.ndarray:
    """A raw embedding (a query's or an item's), L2-normalised float32; ValueError saying what is wrong with it
    (dimension, NaN or infinite values, the zero vector)."""
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1 or len(vector) != dim:
        raise ValueError(f"embedding has {vector.size} values; this index needs {dim}")
    if not np.isfinite(vector).all():
        raise ValueError("embedding contains NaN or infinite values")
    scale = float(np.max(np.abs(vector)))
    if scale == 0.0:
        raise ValueError("embedding is the zero vector")
    vector = vector / scale  # before squaring: values near the float limits would overflow
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def unit_vectors(embeddings: list[list[float]], dim: int) -> np.ndarray | None:
    """`unit_vector` of many embeddings at once, (n, dim) float32; None when any of them is invalid (then check
    each with `unit_vector` to say which and why)."""
    if any(len(e) != dim for e in embeddings):
        return None
    matrix = np.array(embeddings, dtype=np.float64).reshape(len(embeddings), dim)
    scale = np.max(np.abs(matrix), axis=1, keepdims=True)
    if not (np.isfinite(scale).all() and (scale > 0).all()):  # NaN or ±inf anywhere makes its row's max so
        return None
    matrix /= scale
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def load_engine(settings: Settings) -> Engine:
    """Load the model and the index (refusing an index built by another model)."""
    encoder = make_encoder(settings)
    index = open_index(settings.index_dir, mmap=settings.mmap, fingerprint=encoder.fingerprint,
                       timeout_s=settings.milvus_timeout_s, milvus_uri=settings.milvus_uri)
    budget = parse_bytes(settings.memory_budget)
    if budget is not None and index.resident_bytes() > budget:
        needed = index.resident_bytes()
        index.close()
        raise UserError(f"index {settings.index_dir} needs about {format_bytes(needed)} of RAM, over the memory budget "
                        f"{settings.memory_budget}: rebuild it with `retrieval index build --memory-budget "
                        f"{settings.memory_budget}` or raise the budget")
    if index.dim != encoder.embed_dim:
        raise UserError(f"index {settings.index_dir} holds {index.dim}-d vectors, the model makes {encoder.embed_dim}-d")
    log.info("loaded model %s and index %s (%s)", encoder.fingerprint, settings.index_dir, index.counts())
    return Engine(settings, encoder, index)
