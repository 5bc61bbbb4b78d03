"""`MilvusIndex`: the service's index interface (`retrieval.index.backend.SearchIndex`) over a Milvus collection.

The process keeps no state of its own: items (vectors, captions, uris, metadata) live in Milvus, ids are Milvus's,
and every read goes to Milvus at consistency level Strong (see `milvus_collection`), so N `retrieval serve`
processes can share one collection. Uploaded image files go to INDEX_DIR/images/ as with FAISS; replicas that
accept uploads share that folder (docs/scale.md).

Durability: an add returns its ids only once Milvus's insert has returned, i.e. the rows are in Milvus's
write-ahead log (a server) or its on-disk store (Milvus Lite), so a kill -9 of the service loses nothing
acknowledged. Failures: every Milvus call carries a timeout; an error or a timeout is `IndexUnavailable`, which
the service answers with 503 and Retry-After, never a hang or a 500.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retrieval.errors import UserError
from retrieval.index.backend import IndexUnavailable, ItemRejected, save_upload
from retrieval.index.image_files import ImageFiles
from retrieval.index.index_dir import Hit
from retrieval.index.manifest import Manifest
from retrieval.index.milvus_collection import (
    FINGERPRINT,
    MAX_VARCHAR,
    OUTPUT,
    check_collection,
    connect,
    rows_of,
)
from retrieval.index.milvus_filters import FACETS, facets_of, refine_ranges, translate
from retrieval.store import MODALITIES, Item, NewItem, utc_now

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
FILTERED_EF_FACTOR = 16  # at 1 % selectivity on Milvus Lite, ef 64 found 0.45 of the filtered top-10 (20k items)
MAX_EF = 32_768  # Milvus's bound on HNSW ef
PAGE = 16_384  # Milvus's largest query window (offset + limit)
T = TypeVar("T")


def _unavailable(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a Milvus failure (down, timed out, refusing) into IndexUnavailable, logged once here."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as err:
            log.warning("Milvus call %s failed: %s", fn.__name__, err)
            raise IndexUnavailable(f"the Milvus index is unavailable ({err.message}); retry shortly") from None

    return call


class MilvusVectors:
    """The `store.embeddings_of` the service reads (clip-retrieval deduplication, "more like this")."""

    def __init__(self, index: MilvusIndex) -> None:
        self._index = index

    @_unavailable
    def embeddings_of(self, ids: list[int]) -> np.ndarray:
        """(len(ids), D) float32 in the order of `ids`; KeyError when one does not exist."""
        found = {r["id"]: r["vector"] for r in self._index.client.get(self._index.name, ids=list(ids),
                                                                     output_fields=["vector"])}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return np.asarray([found[i] for i in ids], np.float32).reshape(len(ids), self._index.dim)


class MilvusIndex:
    """Search, add, delete, list and patch items of one Milvus collection; thread-safe (the client is)."""

    def __init__(self, path: str | Path, manifest: Manifest, mmap: bool = False, fingerprint: str | None = None,
                 timeout_s: float | None = None) -> None:
        if mmap:
            raise UserError("--mmap is for FAISS indexes: replicas of a Milvus index simply share its collection")
        self.path = Path(path)
        self.manifest = manifest
        self.read_only = False
        self.timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        self.uri, self.name = manifest.milvus["uri"], manifest.milvus["collection"]
        self.client = connect(self.uri, self.timeout)
        try:
            described = check_collection(self.client, self.name, manifest.dim, fingerprint)
            if described.get("properties", {}).get(FINGERPRINT) != manifest.fingerprint:
                raise UserError(f"Milvus collection {self.name!r} was rebuilt by another model than {self.path} "
                                f"records: build the index folder again")
            self.client.load_collection(self.name, timeout=self.timeout)
        except BaseException:
            self.client.close()
            raise
        self.store = MilvusVectors(self)
        self.image_files = ImageFiles(self.path, manifest.image_roots)
        self._search_params = {m: dict(c.search_params) for m, c in manifest.collections.items()}

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def _items(self, rows: list[dict[str, Any]]) -> list[Item]:
        return [Item(int(r["id"]), r["modality"], r.get("caption"), r.get("uri"), r.get("metadata") or {},
                     r["created"]) for r in rows]

    @_unavailable
    def search(self, modality: str, queries: np.ndarray, k: int, wait: bool = True,
               allowed: str | None = None) -> list[list[Hit]] | None:
        """Top-k items of `modality` per query row, best first (equal scores in id order, as with FAISS).

        `allowed`: an expression from `matching`. `wait=False` returns None: a Milvus call is never made on the
        caller's event loop."""
        if not wait:
            return None
        tuned = self._search_params[modality]
        # HNSW only: ef ≥ k, and a filtered search walks FILTERED_EF_FACTOR× further, as the FAISS backend widens its
        # budget by the inverse of the allowed fraction (which Milvus would only tell at the cost of a second scan).
        widen = FILTERED_EF_FACTOR if allowed else 1
        params = {"ef": min(MAX_EF, max(k, int(tuned["ef"]) * widen))} if "ef" in tuned else {}
        answers = self.client.search(
            self.name, data=np.asarray(queries, np.float32).tolist(), anns_field="vector", limit=k,
            filter=allowed or "", partition_names=[modality], output_fields=OUTPUT,
            search_params={"metric_type": "IP", "params": params}, timeout=self.timeout,
        )
        return [
            sorted((Hit(self._items([{**hit["entity"], "id": hit["id"]}])[0], float(hit["distance"])) for hit in row),
                   key=lambda hit: (-hit.score, hit.item.id))
            for row in answers
        ]

    @_unavailable
    def matching(self, modality: str, spec: dict[str, Any]) -> str:
        """The Milvus expression for a metadata filter (see `milvus_filters`), for `search(allowed=...)`."""
        return refine_ranges(translate(spec), lambda expression: self._scan(modality, expression, [FACETS]))

    def _scan(self, modality: str | None, expression: str, fields: list[str]) -> Iterator[tuple[int, Any]]:
        """(id, the first of `fields`) of every item matching an expression, in pages."""
        iterator = self.client.query_iterator(self.name, batch_size=PAGE // 4, filter=expression, output_fields=fields,
                                              partition_names=[modality] if modality else None, timeout=self.timeout)
        try:
            while page := iterator.next():
                yield from ((int(row["id"]), row.get(fields[0])) for row in page)
        finally:
            iterator.close()

    @_unavailable
    def listing(self, modality: str | None, spec: dict[str, Any] | None, offset: int,
                limit: int) -> tuple[list[Item], int]:
        """One page of items in id order (of a modality or all, optionally filtered) and how many there are."""
        ids: list[int] = []
        for m in (modality,) if modality else MODALITIES:
            expression = self.matching(m, spec) if spec else "id > 0"
            ids += [item_id for item_id, _ in self._scan(m, expression, ["id"])]
        ids.sort()
        page = ids[offset : offset + limit]
        found = {item.id: item for item in self._get(page)}
        return [found[i] for i in page if i in found], len(ids)

    def _get(self, ids: list[int]) -> list[Item]:
        if not ids:
            return []
        return self._items(self.client.get(self.name, ids=ids, output_fields=OUTPUT, timeout=self.timeout))

    @_unavailable
    def get(self, item_id: int) -> Item | None:
        """One stored item."""
        found = self._get([item_id])
        return found[0] if found else None

    @_unavailable
    def add(self, items: list[NewItem]) -> list[int]:
        """Insert items (one insert per modality); returns their ids once Milvus has acknowledged them."""
        for n, item in enumerate(items):
            for what in ("caption", "uri"):
                text = getattr(item, what)
                if text is not None and len(text.encode()) > MAX_VARCHAR:
                    raise ItemRejected(f"items[{n}]: {what} longer than the Milvus backend's {MAX_VARCHAR} bytes")
        ids: list[int | None] = [None] * len(items)
        created = utc_now()
        for modality in MODALITIES:
            rows = [n for n, item in enumerate(items) if item.modality == modality]
            if not rows:
                continue
            vectors = np.stack([np.asarray(items[n].embedding, np.float32).reshape(-1) for n in rows])
            inserted = self.client.insert(
                self.name, rows_of(modality, vectors, [items[n].caption for n in rows], [items[n].uri for n in rows],
                                   [items[n].metadata for n in rows], created),
                partition_name=modality, timeout=self.timeout,
            )["ids"]
            for n, item_id in zip(rows, inserted, strict=True):
                ids[n] = int(item_id)
        return [int(i) for i in ids if i is not None]

    @_unavailable
    def delete(self, item_id: int) -> Item | None:
        """Remove an item; None when there is no such id."""
        item = self.get(item_id)
        if item is not None:
            self.client.delete(self.name, ids=[item_id], timeout=self.timeout)
        return item

    @_unavailable
    def update_metadata(self, item_id: int, changes: dict[str, Any]) -> Item | None:
        """Merge metadata changes (None removes a key) into an item; None when there is no such id.

        A partial upsert of `metadata` and `facets` only: the vector and the id stay as they are."""
        item = self.get(item_id)
        if item is None:
            return None
        metadata = {k: v for k, v in {**item.metadata, **changes}.items() if v is not None}
        self.client.upsert(self.name, [{"id": item_id, "metadata": metadata, FACETS: facets_of(metadata)}],
                           partition_name=item.modality, partial_update=True, timeout=self.timeout)
        item.metadata = metadata
        return item

    @_unavailable
    def counts(self) -> dict[str, int]:
        """Live items per modality (a count in Milvus). The modality is in the filter, not only the partition:
        Milvus Lite's `count(*)` ignores `partition_names` and counts the whole collection."""
        return {m: int(self.client.query(self.name, filter=f'modality == "{m}"', output_fields=["count(*)"],
                                         partition_names=[m], timeout=self.timeout)[0]["count(*)"]) for m in MODALITIES}

    def save_image(self, data: bytes, suffix: str) -> str:
        """Keep uploaded image bytes under INDEX_DIR/images/; returns the item uri."""
        return save_upload(self.path, data, suffix)

    def image_path(self, item: Item) -> Path | None:
        """The image file this index may serve for an item (`ImageFiles`' rule), or None."""
        return self.image_files.path(item.uri) if item.modality == "image" else None

    def snapshot(self, force: bool = False) -> bool:
        """Nothing to write: Milvus persists every acknowledged write itself."""
        return False

    def refresh(self) -> None:
        """Nothing to follow: every read goes to Milvus."""

    def resident_bytes(self) -> int:
        """RAM this process holds for the index: none (it lives in Milvus)."""
        return 0

    @_unavailable
    def info(self) -> dict[str, Any]:
        """What `/v1/info` reports about the index."""
        counts = self.counts()
        return {
            "fingerprint": self.manifest.fingerprint,
            "dim": self.dim,
            "metric": self.manifest.metric,
            "read_only": False,
            "backend": "milvus",
            "indexes": {
                m: {"kind": f"milvus:{c.factory}", "count": counts[m], "search_params": c.search_params,
                    "recall_at_10": c.recall_at_10, "deleted_pending_rebuild": 0, "collection": self.name}
                for m, c in self.manifest.collections.items()
            },
        }

    def close(self) -> None:
        """Close the client (Milvus holds every acknowledged write already)."""
        self.client.close()
