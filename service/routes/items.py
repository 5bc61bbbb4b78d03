"""Items: add (texts as JSON, images as multipart), list, read, update metadata, serve image bytes, delete.

An added item's id is returned only after its row is committed to the item store (see
`retrieval.index.index_dir`), so every acknowledged id survives a crash.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import TypeAdapter, ValidationError

from retrieval.index.filters import FILTER_SCHEMA
from retrieval.store import MAX_ID
from service.adding import add_images, add_json
from service.auth import require_api_key, require_read_key
from service.deps import error_responses, get_engine
from service.engine import Engine
from service.forms import IMAGE_FILE, multipart_body, read_form
from service.schemas import AddItemsRequest, AddItemsResponse, Deleted, Item, ItemList, MetadataPatch
from service.search_schemas import Filter, limit

router = APIRouter(prefix="/v1/items", tags=["items"])
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="an item id")]

_IMAGE_FIELDS = {
    "files": {"type": "array", "items": IMAGE_FILE, "minItems": 1, "description": "images",
              **limit("max_items_per_request", "maxItems")},
    "captions": {"type": ["array", "string"], "items": {"type": "string"},
                 "description": "one per file, in order (optional; a single caption is one text part)"},
    "metadata": {"type": ["object", "array"], "items": {"type": "object"},
                 "description": "a JSON object for every file, or an array of one object per file (optional)"},
}
_ADD_BODY = multipart_body(_IMAGE_FIELDS, ["files"], files=("files",))
_JSON_BODY = AddItemsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
COMPONENTS = _JSON_BODY.pop("$defs", {})  # the item model: added to the served schema's components (service.openapi)
_ADD_BODY["requestBody"]["content"]["application/json"] = {"schema": _JSON_BODY}
_LIST_FILTER = {"parameters": [{
    "name": "filter", "in": "query", "required": False, "description": "a metadata filter, as in searches",
    "content": {"application/json": {"schema": FILTER_SCHEMA}},
}]}
_FILTER = TypeAdapter(Filter)
# The HTTP server itself refuses a request line over 64 KiB (a very large filter) before the app sees it.
_LONG_URL = {"content": {"text/plain": {"schema": {"type": "string"}}},
             "description": "Malformed request, or a URL over the HTTP server's 64 KiB limit (plain text)"}


def _item(request: Request, item: Any) -> Item:
    url = str(request.url_for("item_image", item_id=item.id)) if item.modality == "image" else None
    return Item(id=item.id, modality=item.modality, caption=item.caption, uri=item.uri, metadata=item.metadata,
                created=item.created, image_url=url)


async def _found(engine: Engine, item_id: int):
    item = await engine.get(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return item


@router.post("", response_model=AddItemsResponse, openapi_extra=_ADD_BODY, dependencies=[Depends(require_api_key)],
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503, 507))
async def add_items(request: Request, engine: Engine = Depends(get_engine)) -> AddItemsResponse:
    """Add up to max_items_per_request items (and at most max_body_bytes of body): texts as JSON
    (`{"texts": [...], "metadata": [...]}`), items as JSON (`{"items": [{"text": ..., "embedding": [...],
    "metadata": {...}}, {"modality": "image", "uri": ..., "caption": ..., "embedding": [...]}]}`: an item with a
    precomputed `embedding` is stored without running the encoder; the embedding must come from the served
    model, see GET /v1/info's `model`), or images as multipart (`files`, `captions`, `metadata`). All or
    nothing: any invalid item refuses the request, listing each error. The ids are returned once the items are
    committed to the item store (durable)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return await add_json(engine, await request.body())
    if kind == "multipart/form-data":
        form = await read_form(request, "files", engine.settings.max_items_per_request, ("captions", "metadata"))
        return await add_images(engine, form)
    raise HTTPException(415, "send texts as application/json or images as multipart/form-data")


@router.get("", response_model=ItemList, openapi_extra=_LIST_FILTER, dependencies=[Depends(require_read_key)],
            responses={**error_responses(401, 422, 503), 400: {**error_responses(400)[400], **_LONG_URL}})
async def list_items(
    request: Request,
    modality: Literal["image", "text"] | None = Query(None, description="only images or only texts (default: both)"),
    offset: int = Query(0, ge=0, le=MAX_ID, description="items to skip (in id order)"),
    limit: int = Query(100, ge=1, le=1000, description="items to return"),
    engine: Engine = Depends(get_engine),
) -> ItemList:
    """Stored items in id order, a page at a time, optionally filtered by metadata (`filter`: URL-encoded JSON)."""
    spec = None
    if "filter" in request.query_params:
        try:
            spec = _FILTER.validate_json(request.query_params["filter"])
        except ValidationError as err:
            raise RequestValidationError([{**e, "loc": ("filter", *e["loc"])} for e in err.errors()]) from None
    page, total = await engine.list_items(modality, spec, offset, limit)
    return ItemList(items=[_item(request, item) for item in page], total=total)


@router.get("/{item_id}", response_model=Item, dependencies=[Depends(require_read_key)],
            responses=error_responses(401, 404, 422, 503))
async def get_item(request: Request, item_id: ItemId, engine: Engine = Depends(get_engine)) -> Item:
    """One item (caption, uri, metadata; `image_url` for images)."""
    return _item(request, await _found(engine, item_id))


@router.patch("/{item_id}", response_model=Item, dependencies=[Depends(require_api_key)],
              responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503, 507))
async def update_item(
    body: MetadataPatch, request: Request, item_id: ItemId, engine: Engine = Depends(get_engine)
) -> Item:
    """Merge metadata into an item: each given key is set, a key given as null is removed."""
    item = await engine.update_metadata(item_id, body.metadata)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return _item(request, item)


@router.get("/{item_id}/image", name="item_image", response_class=FileResponse,
            dependencies=[Depends(require_read_key)],
            responses={200: {"content": {"image/*": {}}, "description": "the image file"},
                       **error_responses(401, 404, 422, 503)})
async def item_image(item_id: ItemId, engine: Engine = Depends(get_engine)) -> FileResponse:
    """The image file of an image item (thumbnails for the web page): only an image uploaded to this server or
    one under the folders its index was built from; any other uri is external (see the item's `uri`)."""
    item = await _found(engine, item_id)
    path = engine.index.image_path(item)
    if path is None and item.modality == "image" and item.uri:
        raise HTTPException(404, f"item {item_id}'s image is external: this server serves only images it stored or "
                                 f"that its index was built from; the item's uri is in GET /v1/items/{item_id}")
    if path is None:
        raise HTTPException(404, f"item {item_id} has no image file")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


@router.delete("/{item_id}", response_model=Deleted, dependencies=[Depends(require_api_key)],
               responses=error_responses(401, 403, 404, 409, 422, 503, 507))
async def delete_item(item_id: ItemId, engine: Engine = Depends(get_engine)) -> Deleted:
    """Remove an item from the store and its index."""
    if await engine.delete(item_id) is None:
        raise HTTPException(404, f"no item with id {item_id}")
    return Deleted(deleted=item_id)
