"""Items: add (texts as JSON, images as multipart), read, serve image bytes, delete.

An added item's id is returned only after its row is committed to the item store (see
`retrieval.index.index_dir`), so every acknowledged id survives a crash.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from retrieval.store import NewItem
from service.auth import require_api_key, require_read_key
from service.deps import check_batch, check_texts, get_engine
from service.engine import Engine
from service.schemas import AddItemsResponse, AddTextsRequest, Deleted, Item, Problem

router = APIRouter(prefix="/v1/items", tags=["items"])
ERRORS = {code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)}

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "images"},
        "captions": {"type": "array", "items": {"type": "string"}, "description": "one per file (optional)"},
        "metadata": {"type": "array", "items": {"type": "string"},
                     "description": "a JSON object per file, or one for all (optional)"},
    },
}
_ADD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": AddTextsRequest.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def _item(request: Request, item: Any) -> Item:
    url = str(request.url_for("item_image", item_id=item.id)) if item.modality == "image" else None
    return Item(id=item.id, modality=item.modality, caption=item.caption, uri=item.uri, metadata=item.metadata,
                created=item.created, image_url=url)


@router.post("", response_model=AddItemsResponse, responses=ERRORS, openapi_extra=_ADD_BODY,
             dependencies=[Depends(require_api_key)])
async def add_items(request: Request, engine: Engine = Depends(get_engine)) -> AddItemsResponse:
    """Add texts (JSON `{"texts": [...], "metadata": [...]}`) or images (multipart `files`, `captions`, `metadata`)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return await _add_texts(request, engine)
    if kind == "multipart/form-data":
        return await _add_images(request, engine)
    raise HTTPException(415, "send texts as application/json or images as multipart/form-data")


async def _add_texts(request: Request, engine: Engine) -> AddItemsResponse:
    try:
        body = AddTextsRequest.model_validate(json.loads(await request.body()))
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"body is not valid JSON: {err.msg} at position {err.pos}") from None
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    check_texts(body.texts, engine.settings)
    metadata = body.metadata if body.metadata is not None else [{} for _ in body.texts]
    if len(metadata) != len(body.texts):
        raise HTTPException(422, f"metadata has {len(metadata)} entries for {len(body.texts)} texts")
    vectors, truncated = await engine.embed_texts(body.texts)
    items = [NewItem("text", v, text, None, meta) for v, text, meta in zip(vectors, body.texts, metadata, strict=True)]
    return AddItemsResponse(ids=await engine.add(items), truncated=truncated)


async def _add_images(request: Request, engine: Engine) -> AddItemsResponse:
    limit = engine.settings.max_texts
    async with request.form(max_files=limit, max_fields=3 * limit) as form:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        captions = [str(c) for c in form.getlist("captions")]
        raw_meta = [str(m) for m in form.getlist("metadata")]
        check_batch(len(files), engine.settings, "files")
        if captions and len(captions) != len(files):
            raise HTTPException(422, f"{len(captions)} captions for {len(files)} files (give one per file, or none)")
        metadata = _metadata(raw_meta, len(files))
        uploads = [await engine.decode(await f.read(), f"files[{n}] ({f.filename})") for n, f in enumerate(files)]
        names = [f.filename for f in files]
    vectors = await engine.embed_images(uploads)
    items = []
    for n, (upload, vector) in enumerate(zip(uploads, vectors, strict=True)):
        uri = await engine.store_image(upload)
        meta = {"filename": names[n], **metadata[n]} if names[n] else metadata[n]
        items.append(NewItem("image", vector, captions[n] if captions else None, uri, meta))
    return AddItemsResponse(ids=await engine.add(items))


def _metadata(raw: list[str], n: int) -> list[dict[str, Any]]:
    """Form `metadata` fields: none, one for all files, or one JSON object per file."""
    if len(raw) not in (0, 1, n):
        raise HTTPException(422, f"{len(raw)} metadata fields for {n} files (give one per file, one, or none)")
    parsed = []
    for k, text in enumerate(raw):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise HTTPException(422, f"metadata[{k}] is not valid JSON") from None
        if not isinstance(value, dict):
            raise HTTPException(422, f"metadata[{k}] must be a JSON object")
        parsed.append(value)
    if not parsed:
        return [{} for _ in range(n)]
    return parsed * n if len(parsed) == 1 else parsed


@router.get("/{item_id}", response_model=Item, responses=ERRORS, dependencies=[Depends(require_read_key)])
def get_item(item_id: int, request: Request, engine: Engine = Depends(get_engine)) -> Item:
    """One item (caption, uri, metadata; `image_url` for images)."""
    item = engine.index.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return _item(request, item)


@router.get("/{item_id}/image", name="item_image", response_class=FileResponse, responses=ERRORS,
            dependencies=[Depends(require_read_key)])
def item_image(item_id: int, engine: Engine = Depends(get_engine)) -> FileResponse:
    """The image file of an image item (thumbnails for the web page)."""
    item = engine.index.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}")
    path = engine.index.image_path(item)
    if path is None:
        raise HTTPException(404, f"item {item_id} has no image file")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


@router.delete("/{item_id}", response_model=Deleted, responses=ERRORS, dependencies=[Depends(require_api_key)])
async def delete_item(item_id: int, engine: Engine = Depends(get_engine)) -> Deleted:
    """Remove an item from the store and its index."""
    if await engine.delete(item_id) is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return Deleted(deleted=item_id)
