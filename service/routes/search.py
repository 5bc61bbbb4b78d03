"""`POST /v1/search` (text | base64 image | embedding) and `POST /v1/search/image` (multipart upload).

Every direction works: text→image, image→text, image→image, text→text, or a raw embedding against
either index (`target`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from retrieval.index import Hit
from service.auth import require_read_key
from service.deps import check_k, check_texts, get_engine
from service.engine import Engine
from service.images import decode_base64
from service.schemas import Problem, SearchRequest, SearchResponse, SearchResult, Target

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Depends(require_read_key)])
ERRORS = {code: {"model": Problem} for code in (400, 401, 413, 415, 422, 503)}


def results(hits: list[Hit]) -> list[SearchResult]:
    """Index hits → response items."""
    return [
        SearchResult(id=h.item.id, score=h.score, modality=h.item.modality, caption=h.item.caption,
                     uri=h.item.uri, metadata=h.item.metadata)
        for h in hits
    ]


@router.post("", response_model=SearchResponse, responses=ERRORS)
async def search(body: SearchRequest, engine: Engine = Depends(get_engine)) -> SearchResponse:
    """Nearest items of `target` to one query: `text`, `image_b64` or `embedding` (exactly one)."""
    start = time.perf_counter()
    given = [name for name in ("text", "image_b64", "embedding") if getattr(body, name) is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of text, image_b64, embedding (got {', '.join(given) or 'none'})")
    check_k(body.k, engine.settings)
    truncated = False
    if body.text is not None:
        check_texts([body.text], engine.settings, "text")
        vectors, flags = await engine.embed_texts([body.text])
        vector, truncated = vectors[0], flags[0]
    elif body.image_b64 is not None:
        upload = await engine.decode(decode_base64(body.image_b64), "image_b64")
        vector = (await engine.embed_images([upload]))[0]
    else:
        vector = engine.query_vector(body.embedding)
    hits = await engine.search(vector, body.target, body.k)
    return SearchResponse(results=results(hits), took_ms=(time.perf_counter() - start) * 1000, truncated=truncated)


@router.post("/image", response_model=SearchResponse, responses=ERRORS)
async def search_image(
    file: UploadFile = File(..., description="the query image"),
    target: Target = Form("image"),
    k: int = Form(10),
    engine: Engine = Depends(get_engine),
) -> SearchResponse:
    """Nearest items of `target` to an uploaded image (multipart `file`, form fields `target`, `k`)."""
    start = time.perf_counter()
    check_k(k, engine.settings)
    upload = await engine.decode(await file.read(), f"file ({file.filename})")
    vector = (await engine.embed_images([upload]))[0]
    hits = await engine.search(vector, target, k)
    return SearchResponse(results=results(hits), took_ms=(time.perf_counter() - start) * 1000)
