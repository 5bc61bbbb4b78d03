"""INDEX_DIR/manifest.json: which model built the index, and what each FAISS file is and how it searches."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import UserError
from retrieval.index.io import atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE = "items.sqlite"
IMAGES = "images"  # uploaded image files, named by content hash


@dataclass
class CollectionInfo:
    """One modality's FAISS file: kind, build and search parameters, size, measured recall."""

    kind: str
    factory: str  # faiss.index_factory string
    build_params: dict[str, Any]
    search_params: dict[str, Any]
    count: int
    recall_at_10: float | None  # against exact search, on the probe the parameters were tuned with
    file: str
    # `ondisk` kind only: the snapshot holds the store's items with ids ≤ max_id, less those deleted up to
    # deletion number `deletions_seq`; newer adds and deletes are replayed from the store at start-up.
    max_id: int | None = None
    deletions_seq: int = 0
    build_stats: dict[str, Any] = field(default_factory=dict)  # build_s, total_s, add_vectors_per_s (ondisk)


@dataclass
class Manifest:
    """Everything a reader needs before loading vectors: model identity, geometry, files."""

    fingerprint: str  # retrieval.checkpoint.model_fingerprint of the model that embedded the items
    dim: int
    created: str
    updated: str
    collections: dict[str, CollectionInfo]
    metric: str = "inner_product"
    target_recall: float = 0.98
    model: dict[str, Any] = field(default_factory=dict)  # embed_dim, context_length, image size
    # index.backend: "faiss" (the files in this folder; manifests older than the field are faiss) or "milvus"
    # (vectors, captions, uris and metadata in a Milvus collection; see retrieval.index.milvus_backend).
    backend: str = "faiss"
    milvus: dict[str, Any] = field(default_factory=dict)  # milvus backend: {"uri", "collection"} (no token)
    # Folders the build's images came from: GET /v1/items/{id}/image serves files under these (and uploads under
    # images/) only (`retrieval.index.image_files`). None: a manifest written before they were recorded.
    image_roots: list[str] | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what manifest.json holds)."""
        return asdict(self)


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Atomically (re)write `folder/manifest.json`."""
    atomic_write_json(Path(folder) / MANIFEST, manifest.to_json())


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check `folder/manifest.json`; a missing or foreign file is a UserError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"not an index directory (no {MANIFEST}): {folder}")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path}: index format {raw.get('format_version')!r}, this version reads {FORMAT_VERSION}")
        raw["collections"] = {name: CollectionInfo(**info) for name, info in raw["collections"].items()}
        return Manifest(**raw)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
        raise UserError(f"{path}: not a valid index manifest ({type(err).__name__}: {err})") from None
