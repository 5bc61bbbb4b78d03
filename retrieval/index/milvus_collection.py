"""The Milvus side of `index.backend: milvus`: connecting, the collection's schema, and building it from embeddings.

One collection holds both modalities, each in its own partition (`image`, `text`), so ids are unique across them
as they are in the SQLite store, and a search touches only its target's partition. Fields: `id` (INT64, primary,
allocated by Milvus: unique and never reused), `vector`, `modality`, `caption`, `uri`, `created`, `metadata`
(JSON, returned as given) and `facets` (JSON derived from the metadata for filtering, see
`retrieval.index.milvus_filters`). The model fingerprint is a collection property, so a server refuses a
collection built by another model even when its INDEX_DIR was copied from elsewhere.

Consistency level Strong, set on the collection: every search and read waits until Milvus has applied all
writes acknowledged before it, whichever client made them. That is what lets N stateless replicas share one
collection (an item added through one replica is found by the next search through any other); Session would
only cover one client's own writes, Bounded/Eventually not even those.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from retrieval.errors import UserError
from retrieval.index.image_files import roots_of
from retrieval.index.io import fsync_dir
from retrieval.index.manifest import MANIFEST, STORE, CollectionInfo, Manifest, write_manifest
from retrieval.index.milvus_filters import facets_of
from retrieval.store import MODALITIES, utc_now

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from retrieval.embed import Embedded

log = logging.getLogger(__name__)

TOKEN_ENV = "MILVUS_TOKEN"
DEFAULT_COLLECTION = "retrieval"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # Milvus's rule for collection names
FINGERPRINT = "retrieval.fingerprint"  # collection property: the model that embedded the items
CONSISTENCY = "Strong"
MAX_VARCHAR = 65_535  # bytes: Milvus's largest VARCHAR (captions, uris)
INDEX_TYPES = {"auto": "AUTOINDEX", "flat": "FLAT", "hnsw": "HNSW"}  # --kind → Milvus index type
DEFAULT_EF = 64  # HNSW search breadth (raised to k when k is larger)
INSERT_BYTES = 16 << 20  # one insert request's vectors: well under gRPC's message limit
OUTPUT = ["id", "modality", "caption", "uri", "metadata", "created"]


def connect(uri: str, timeout_s: float | None) -> MilvusClient:
    """A client for `uri` (a Milvus Lite `.db` path or `http(s)://host:port`; token from MILVUS_TOKEN), or a
    UserError naming the URI when Milvus cannot be reached."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    if not (uri.endswith(".db") or re.match(r"https?://", uri)):
        raise UserError(f"--milvus-uri {uri!r}: give a Milvus Lite file ending in .db or http(s)://host:port")
    try:
        return MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout_s)
    except MilvusException as err:
        raise UserError(f"cannot reach Milvus at {uri}: {err.message}") from None


def check_name(name: str) -> str:
    """A valid collection name, or a UserError saying the rule."""
    if not NAME.fullmatch(name):
        raise UserError(f"--collection {name!r}: a Milvus collection name is a letter or _ followed by up to 254 "
                        f"letters, digits or _")
    return name


def check_collection(client: MilvusClient, name: str, dim: int, fingerprint: str | None) -> dict[str, Any]:
    """Describe the collection and refuse one that is missing, of another dimension or of another model."""
    if not client.has_collection(name):
        raise UserError(f"Milvus has no collection {name!r}: build it with `retrieval index build --backend milvus`")
    described = client.describe_collection(name)
    vector = next((f for f in described["fields"] if f["name"] == "vector"), None)
    held = int(vector["params"]["dim"]) if vector else None
    if held != dim:
        raise UserError(f"Milvus collection {name!r} holds {held}-d vectors, this index needs {dim}-d")
    built_by = described.get("properties", {}).get(FINGERPRINT)
    if fingerprint is not None and built_by != fingerprint:
        raise UserError(f"Milvus collection {name!r} was built by model {built_by}, but the checkpoint is model "
                        f"{fingerprint}: rebuild it with this checkpoint (`retrieval index build --backend milvus`)")
    return described


def create_collection(client: MilvusClient, name: str, dim: int, fingerprint: str, kind: str,
                      params: dict[str, Any]) -> dict[str, Any]:
    """A new, empty collection (schema, vector index, partitions, fingerprint); returns the index parameters."""
    from pymilvus import DataType

    if kind not in INDEX_TYPES:
        raise UserError(f"--kind {kind} is a FAISS kind; with --backend milvus use {', '.join(INDEX_TYPES)}")
    schema = client.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("modality", DataType.VARCHAR, max_length=8)
    schema.add_field("caption", DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
    schema.add_field("uri", DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
    schema.add_field("created", DataType.VARCHAR, max_length=32)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("facets", DataType.JSON)
    build = {"M": params.get("M", 32), "efConstruction": params.get("efConstruction", 80)} if kind == "hnsw" else {}
    index = client.prepare_index_params()
    index.add_index("vector", index_type=INDEX_TYPES[kind], metric_type="IP", params=build)
    client.create_collection(name, schema=schema, index_params=index, consistency_level=CONSISTENCY,
                             properties={FINGERPRINT: fingerprint})
    for modality in MODALITIES:
        client.create_partition(name, modality)
    return {"index_type": INDEX_TYPES[kind], **build}


def rows_of(modality: str, vectors: np.ndarray, captions: list, uris: list, metadata: list[dict],
            created: str) -> list[dict[str, Any]]:
    """Insert rows for one modality (the `facets` derived here, so every writer derives them the same way)."""
    return [
        {"vector": v, "modality": modality, "caption": c, "uri": u, "created": created, "metadata": m,
         "facets": facets_of(m)}
        for v, c, u, m in zip(vectors.astype(np.float32).tolist(), captions, uris, metadata, strict=True)
    ]


def build_milvus_index(out: str | Path, embedded: Embedded, uri: str, collection: str | None = None,
                       kind: str = "auto", params: dict[str, Any] | None = None,
                       model_info: dict[str, Any] | None = None, force: bool = False, progress: bool = False,
                       timeout_s: float | None = None) -> Manifest:
    """Fill a Milvus collection from an embeddings folder and write INDEX_DIR `out` (its manifest names it).

    The manifest is written last: a build that fails leaves no manifest naming a half-filled collection (run it
    again with --force, which drops the collection first)."""
    out = Path(out)
    name = check_name(collection or DEFAULT_COLLECTION)
    if ((out / MANIFEST).exists() or (out / STORE).exists()) and not force:
        raise UserError(f"{out} already holds an index; use --force to replace it")
    if uri.endswith(".db"):
        uri = str(Path(uri).resolve())  # a Lite file is found from wherever the service starts
    client = connect(uri, timeout_s)
    try:
        if client.has_collection(name):
            if not force:
                raise UserError(f"Milvus already has a collection {name!r}; use --force to replace it, or --collection")
            client.drop_collection(name)
        index_params = create_collection(client, name, embedded.dim, embedded.fingerprint, kind, params or {})
        ids = _insert_all(client, name, embedded, progress)
        client.flush(name)  # seal what was inserted: the build is complete in Milvus's storage
    finally:
        client.close()
    now = utc_now()
    collections = {
        m: CollectionInfo(kind="milvus", factory=index_params["index_type"], build_params=index_params,
                          search_params={"ef": DEFAULT_EF} if kind == "hnsw" else {}, count=len(ids[m]),
                          recall_at_10=None, file="")
        for m in MODALITIES
    }
    manifest = Manifest(fingerprint=embedded.fingerprint, dim=embedded.dim, created=now, updated=now,
                        collections=collections, model=dict(model_info or {}), backend="milvus",
                        milvus={"uri": uri, "collection": name},
                        image_roots=roots_of(entry.uri for entry in embedded.images))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (STORE, f"{STORE}-wal", f"{STORE}-shm"):  # a FAISS index this one replaces
        (out / stale).unlink(missing_ok=True)
    for old in [*out.glob("*.faiss"), *out.glob("*.ivfdata")]:
        old.unlink()
    write_manifest(out, manifest)
    fsync_dir(out)
    return manifest


def _insert_all(client: MilvusClient, name: str, embedded: Embedded, progress: bool) -> dict[str, list[int]]:
    """Insert images, then texts (a caption's metadata gets `image_id`, its image's Milvus id), in chunks."""
    chunk = max(1, INSERT_BYTES // (4 * embedded.dim))
    created = utc_now()
    ids: dict[str, list[int]] = {m: [] for m in MODALITIES}
    bar = tqdm(total=len(embedded.images) + len(embedded.texts), desc="milvus insert", unit="item",
               unit_scale=True, disable=not progress)
    for start in range(0, len(embedded.images), chunk):
        entries = embedded.images[start : start + chunk]
        rows = rows_of("image", embedded.image_vectors[start : start + chunk], [e.caption for e in entries],
                       [e.uri for e in entries], [dict(e.metadata) for e in entries], created)
        ids["image"] += client.insert(name, rows, partition_name="image")["ids"]
        bar.update(len(entries))
    for start in range(0, len(embedded.texts), chunk):
        entries = embedded.texts[start : start + chunk]
        metadata = [{**e.metadata, "image_id": int(ids["image"][e.image])} if e.image is not None else dict(e.metadata)
                    for e in entries]
        rows = rows_of("text", embedded.text_vectors[start : start + chunk], [e.text for e in entries],
                       [None] * len(entries), metadata, created)
        ids["text"] += client.insert(name, rows, partition_name="text")["ids"]
        bar.update(len(entries))
    bar.close()
    return ids
