"""`POST /v1/search` (JSON query), `POST /v1/search/image` (multipart upload), `POST /v1/search/batch`.

Every direction works: text→image, image→text, image→image, text→text, a raw embedding or a stored item
against either index (`target`), each with the shared options (filter, k, offset, min_score).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.auth import require_read_key
from service.deps import error_responses, get_engine
from service.engine import Engine
from service.forms import IMAGE_FILE, multipart_body, read_form
from service.images import ImageRejected
from service.query import resolve, results, run, text_and_image
from service.search_schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    ImageSearchForm,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Depends(require_read_key)])
ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)
_IMAGE_FORM = ImageSearchForm.model_json_schema()
_IMAGE_BODY = multipart_body({"file": IMAGE_FILE, **_IMAGE_FORM["properties"]}, ["file"], files=("file",))


@router.post("", response_model=SearchResponse, responses=ERRORS)
async def search(body: SearchRequest, engine: Engine = Depends(get_engine)) -> SearchResponse:
    """Nearest items of `target` to one query: `text`, `image_b64`, `embedding` or `item_id` (exactly one), or
    `text` + `image_b64` combined by `text_weight`; `filter`, `offset` and `min_score` narrow the results."""
    start = time.perf_counter()
    query = await resolve(engine, body)
    hits = await run(engine, query, body)
    return SearchResponse(results=results(hits), took_ms=(time.perf_counter() - start) * 1000, truncated=query.truncated)


@router.post("/image", response_model=SearchResponse, responses=ERRORS, openapi_extra=_IMAGE_BODY)
async def search_image(request: Request, engine: Engine = Depends(get_engine)) -> SearchResponse:
    """Nearest items of `target` to an uploaded image (multipart `file`), optionally combined with a `text`;
    the other form fields are the search options (`filter` as a JSON object)."""
    start = time.perf_counter()
    form = await read_form(request, "file", 1, tuple(_IMAGE_FORM["properties"]))
    values = {name: form.single(name) for name in form.fields}
    if "filter" in values:
        values["filter"] = form.json("filter")
    try:
        options = ImageSearchForm.model_validate(values, strict=False)
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    filename, data = form.files[0]
    upload = await engine.decode(data, f"file ({filename})")
    query = await text_and_image(engine, options.text, upload, options.text_weight)
    hits = await run(engine, query, options)
    return SearchResponse(results=results(hits), took_ms=(time.perf_counter() - start) * 1000, truncated=query.truncated)


@router.post("/batch", response_model=BatchSearchResponse, responses=ERRORS)
async def search_batch(body: BatchSearchRequest, engine: Engine = Depends(get_engine)) -> BatchSearchResponse:
    """Several searches in one request, one result list per query in order; their texts and images are
    embedded together. One bad query fails the request, naming it (`queries[2]: ...`)."""
    start = time.perf_counter()
    if len(body.queries) > engine.settings.max_texts:
        raise HTTPException(422, f"{len(body.queries)} queries; the limit is {engine.settings.max_texts}")

    async def one(n: int, query: SearchRequest):
        try:
            return await run(engine, await resolve(engine, query), query)
        except HTTPException as err:
            raise HTTPException(err.status_code, f"queries[{n}]: {err.detail}", headers=err.headers) from None
        except ImageRejected as err:
            raise ImageRejected(err.status, f"queries[{n}]: {err.message}") from None

    pages = await asyncio.gather(*(one(n, query) for n, query in enumerate(body.queries)), return_exceptions=True)
    failed = next((page for page in pages if isinstance(page, BaseException)), None)
    if failed is not None:
        raise failed
    return BatchSearchResponse(results=[results(hits) for hits in pages], took_ms=(time.perf_counter() - start) * 1000)
