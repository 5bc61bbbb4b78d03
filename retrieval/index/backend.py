"""`index.backend: faiss | milvus`: the one interface the service uses, and `open_index` that picks it.

The manifest names the backend (`Manifest.backend`; manifests older than the field are FAISS), so
`retrieval serve --index DIR` needs no flag of its own. `IndexDir` (FAISS files + SQLite item store in the
folder) and `MilvusIndex` (a Milvus collection holding vectors, captions, uris and metadata) both satisfy
`SearchIndex`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.errors import UserError
from retrieval.index.io import atomic_write_bytes
from retrieval.index.manifest import IMAGES, Manifest, read_manifest
from retrieval.store import Item, NewItem

BACKENDS = ("faiss", "milvus")


def save_upload(index_dir: Path, data: bytes, suffix: str) -> str:
    """Keep uploaded image bytes under INDEX_DIR/images/ (atomic, content-addressed); returns the item uri. Both
    backends keep uploads there: replicas of a Milvus index that accept uploads share the folder."""
    folder = index_dir / IMAGES
    folder.mkdir(exist_ok=True)
    name = f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if not (folder / name).is_file():
        atomic_write_bytes(folder / name, data)
    return f"{IMAGES}/{name}"


class IndexUnavailable(Exception):
    """The index engine cannot answer now (a Milvus that is down, or slower than its timeout): retry later."""


class ItemRejected(ValueError):
    """An item the index engine cannot hold as given (e.g. a caption over Milvus's VARCHAR limit)."""


class ItemReader(Protocol):
    """What the service reads of stored items besides search hits."""

    def embeddings_of(self, ids: list[int]) -> np.ndarray: ...


class SearchIndex(Protocol):
    """What `service.engine.Engine` needs of an opened index, whatever its backend.

    `matching` returns a restriction that the same index's `search` takes as `allowed` (FAISS: sorted item ids;
    Milvus: a boolean expression)."""

    manifest: Manifest
    read_only: bool
    store: ItemReader

    @property
    def dim(self) -> int: ...

    def search(self, modality: str, queries: np.ndarray, k: int, wait: bool = True, allowed: Any = None) -> Any: ...

    def matching(self, modality: str, spec: dict[str, Any]) -> Any: ...

    def listing(self, modality: str | None, spec: dict[str, Any] | None, offset: int, limit: int) -> tuple[list[Item], int]: ...

    def add(self, items: list[NewItem]) -> list[int]: ...

    def delete(self, item_id: int) -> Item | None: ...

    def update_metadata(self, item_id: int, changes: dict[str, Any]) -> Item | None: ...

    def get(self, item_id: int) -> Item | None: ...

    def counts(self) -> dict[str, int]: ...

    def info(self) -> dict[str, Any]: ...

    def save_image(self, data: bytes, suffix: str) -> str: ...

    def image_path(self, item: Item) -> Path | None: ...

    def snapshot(self, force: bool = False) -> bool: ...

    def refresh(self) -> None: ...

    def resident_bytes(self) -> int: ...

    def close(self) -> None: ...


def open_index(path: str | Path, mmap: bool = False, fingerprint: str | None = None,
               timeout_s: float | None = None, milvus_uri: str | None = None) -> SearchIndex:
    """Open INDEX_DIR with the backend its manifest names; `fingerprint`: refuse an index of another model;
    `timeout_s`: the longest a Milvus call may take before the service answers 503; `milvus_uri`: where to reach
    Milvus when not at the URI the build recorded (another network's address for the same server)."""
    manifest = read_manifest(path)
    if manifest.backend not in BACKENDS:
        raise UserError(f"{path}: index backend {manifest.backend!r} is not one of {', '.join(BACKENDS)}")
    if manifest.backend == "milvus":
        from retrieval.index.milvus_backend import MilvusIndex

        if milvus_uri:
            manifest.milvus["uri"] = milvus_uri
        return MilvusIndex(path, manifest, mmap=mmap, fingerprint=fingerprint, timeout_s=timeout_s)
    from retrieval.index.index_dir import IndexDir

    return IndexDir(path, mmap=mmap, fingerprint=fingerprint)
