"""Adding items (POST /v1/items): all or nothing per request, every bad item reported.

A request is checked whole before anything is stored: texts by their model (each blank text is one error),
precomputed embeddings like a search's (dimension, finite, not zero: each bad one is one error), images by
decoding every file (each unreadable file is one error). Any error → the request is refused with the list
(`InvalidItems`), and nothing of it is added; otherwise the items are embedded (those without an embedding)
and committed in one store transaction, so a crash adds all of them or none. Precomputed embeddings are taken
to come from the served model: nothing can check that (see the `embedding` field's description).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from retrieval.index.image_files import ImageFiles
from retrieval.json_rules import repaired_text, value_problem
from retrieval.store import NewItem
from service.deps import check_count
from service.engine import Engine, Upload, unit_vector, unit_vectors
from service.forms import Form, parse_json
from service.images import ImageRejected
from service.schemas import AddItemsRequest, AddItemsResponse, ItemError, NewItemBody


class InvalidItems(Exception):
    """Items of one request that cannot be added; answered with `status` and one error per bad item."""

    def __init__(self, status: int, errors: list[ItemError]) -> None:
        super().__init__(f"{len(errors)} invalid item(s)")
        self.status = status
        self.errors = errors

    @property
    def detail(self) -> str:
        listed = "; ".join(f"{e.field}: {e.detail}" for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        return f"{len(self.errors)} invalid item(s), nothing was added: {listed}{more}"


_ONE_PARSE_AT_A_TIME = threading.Lock()


def _parse_add_body(data: bytes) -> AddItemsRequest:
    """The validated body; RequestValidationError (400 for bad JSON, 422 naming fields) otherwise."""
    with _ONE_PARSE_AT_A_TIME:
        try:  # pydantic-core parses and validates in one pass: half the time of json.loads + validation
            return AddItemsRequest.model_validate_json(data)
        except ValidationError:  # parsed again for the messages every JSON route gives (400 bad JSON, fields)
            try:
                return AddItemsRequest.model_validate(parse_json(data))
            except ValidationError as err:
                raise RequestValidationError(err.errors()) from None


async def add_json(engine: Engine, data: bytes) -> AddItemsResponse:
    """A JSON body: `{"texts": [...], "metadata": [...]}`, or `{"items": [...]}` (each item optionally with a
    precomputed embedding)."""
    # A bulk body takes long to parse (500 items × 128-d embeddings: ~20 ms, 1000 × 512-d: ~150 ms on this
    # machine): in a worker thread, so searches on the event loop are not queued behind it, and one at a
    # time (parsing holds the GIL: parallel parses add no throughput, only contention with the event loop).
    body = await run_in_threadpool(_parse_add_body, data)
    check_count(body.count, engine.settings.max_items_per_request, "items")
    if body.items is not None:
        return await _add_items(engine, body.items)
    metadata = body.metadata or [{} for _ in body.texts]
    if len(metadata) != len(body.texts):
        raise HTTPException(422, f"metadata has {len(metadata)} entries for {len(body.texts)} texts (give one per text)")
    vectors, truncated = await engine.embed_texts(body.texts)
    items = [NewItem("text", v, text, None, meta) for v, text, meta in zip(vectors, body.texts, metadata, strict=True)]
    return AddItemsResponse(ids=await engine.add(items), truncated=truncated)


def _given_vectors(entries: list[NewItemBody], dim: int) -> list[np.ndarray | None]:
    """Each item's given embedding as a unit vector (None where the item has none); InvalidItems listing every
    bad one."""
    vectors: list[np.ndarray | None] = [None] * len(entries)
    given = [k for k, entry in enumerate(entries) if entry.embedding is not None]
    checked = unit_vectors([entries[k].embedding for k in given], dim)
    if checked is None:
        errors = []
        for k in given:
            try:
                unit_vector(entries[k].embedding, dim)
            except ValueError as err:
                errors.append(ItemError(field=f"items[{k}].embedding", detail=str(err)))
        raise InvalidItems(422, errors)
    for k, vector in zip(given, checked, strict=True):
        vectors[k] = vector
    return vectors


def _check_uris(entries: list[NewItemBody], image_files: ImageFiles) -> None:
    """InvalidItems listing every uri that names a file of the index folder (the item store, the manifest, …)."""
    errors = [ItemError(field=f"items[{k}].uri", detail="names a file of the index folder; give the image's own "
                                                       "location (a URL)")
              for k, entry in enumerate(entries) if entry.uri and image_files.names_index_file(entry.uri)]
    if errors:
        raise InvalidItems(422, errors)


async def _add_items(engine: Engine, entries: list[NewItemBody]) -> AddItemsResponse:
    """Items of the `items` form: given embeddings are checked like a search's (every bad one listed), the
    texts without one are encoded, then all are committed together."""
    await run_in_threadpool(_check_uris, entries, engine.index.image_files)  # file-system look-ups: off the loop
    vectors = await run_in_threadpool(_given_vectors, entries, engine.index.dim)  # a bulk body: off the event loop
    truncated = [False] * len(entries)
    to_encode = [k for k, vector in enumerate(vectors) if vector is None]  # text items only (the model checked)
    if to_encode:
        encoded, flags = await engine.embed_texts([entries[k].text for k in to_encode])
        for k, vector, flag in zip(to_encode, encoded, flags, strict=True):
            vectors[k], truncated[k] = vector, flag
    items = [NewItem(e.modality, vector, e.text if e.modality == "text" else e.caption, e.uri, e.metadata or {})
             for e, vector in zip(entries, vectors, strict=True)]
    return AddItemsResponse(ids=await engine.add(items), truncated=truncated)


async def add_images(engine: Engine, form: Form) -> AddItemsResponse:
    """Images from a multipart body: `files`, optional `captions` (one per file), optional `metadata`."""
    n = len(form.files)
    check_count(n, engine.settings.max_items_per_request, "items")
    captions = form.fields.get("captions", [])
    if captions and len(captions) != n:
        raise HTTPException(422, f"{len(captions)} captions for {n} files (give one per file, or none)")
    metadata = _metadata(form.json("metadata"), n) if "metadata" in form.fields else [{} for _ in range(n)]
    uploads: list[Upload] = []
    errors: list[ItemError] = []
    statuses = set()
    for k, (name, data) in enumerate(form.files):
        try:
            uploads.append(await engine.decode(data, name or "file"))
        except ImageRejected as err:
            errors.append(ItemError(field=f"files[{k}]", detail=err.message))
            statuses.add(err.status)
    if errors:
        raise InvalidItems(statuses.pop() if len(statuses) == 1 else 422, errors)
    vectors = await engine.embed_images(uploads)
    items = []
    for k, (upload, vector) in enumerate(zip(uploads, vectors, strict=True)):
        uri = await engine.store_image(upload)
        meta = _with_filename(form.files[k][0], metadata[k])
        items.append(NewItem("image", vector, captions[k] if captions else None, uri, meta))
    return AddItemsResponse(ids=await engine.add(items))


def _metadata(value: Any, n: int) -> list[dict[str, Any]]:
    """The `metadata` part: one JSON object for every file, or a JSON array of one object per file (each keeping
    `retrieval.json_rules`)."""
    if isinstance(value, dict):
        _check_metadata(value, "")
        return [dict(value) for _ in range(n)]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        if not value:  # an empty list: no metadata, as for JSON texts
            return [{} for _ in range(n)]
        if len(value) != n:
            raise HTTPException(422, f"metadata has {len(value)} objects for {n} files (give one per file, or one object)")
        for k, meta in enumerate(value):
            _check_metadata(meta, f"[{k}]")
        return value
    raise HTTPException(422, "metadata: give a JSON object (for every file) or an array of one object per file")


def _with_filename(name: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """The upload's file name goes into the metadata; a name that is not valid Unicode (undecodable bytes in the
    header) is kept with U+FFFD in their place rather than refusing the image."""
    if not name:
        return metadata
    return {"filename": repaired_text(name), **metadata}


def _check_metadata(metadata: dict[str, Any], where: str) -> None:
    problem = value_problem(metadata, where)
    if problem:
        raise HTTPException(422, f"metadata{'' if problem.startswith('[') else ': '}{problem}")
