"""clip-retrieval back-end compatibility: `POST /knn-service` and `GET /indices-list`.

Mirrors `clip_retrieval/clip_back.py` closely enough that its `ClipClient` works unchanged: the body is
read as JSON whatever its content type (the client posts `data=json.dumps(...)` without one); `modality`
picks the index; the answer is a list of `{"id", "similarity", "caption", "url"}`, where `url` serves
the image (for a caption: the image it describes). `deduplicate` drops results whose embedding is
near-identical (cosine > 0.94, clip-retrieval's threshold) to a better-ranked one. Safety, violence and
aesthetic options are accepted and ignored (this server has no such models); `image_url` is refused,
since the server does not fetch URLs. Exactly one of `text`, `image`, `embedding_input` is a query (the others
null or absent), as the schema says.
"""

from __future__ import annotations

import re

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from retrieval.index import Hit
from service.auth import require_read_key
from service.deps import check_k, error_responses, get_engine
from service.engine import Engine
from service.forms import read_json
from service.images import decode_base64
from service.schemas import KnnRequest, KnnResult
from service.search_schemas import NON_BLANK

router = APIRouter(tags=["clip-retrieval compatibility"], dependencies=[Depends(require_read_key)])
DEDUP_THRESHOLD = 0.94
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": KnnRequest.model_json_schema()}}}}


@router.get("/indices-list", response_model=list[str], responses=error_responses(401, 503))
async def indices_list(request: Request) -> list[str]:
    """The index names a client may pass as `indice_name` (one: this server's)."""
    return [request.app.state.settings.name]


@router.post("/knn-service", response_model=list[KnnResult], openapi_extra=_BODY,
             responses=error_responses(400, 401, 404, 413, 415, 422, 503))
async def knn_service(request: Request, engine: Engine = Depends(get_engine)) -> list[KnnResult]:
    """clip-retrieval's nearest-neighbour query (text, base64 image, or embedding)."""
    try:
        body = KnnRequest.model_validate(await read_json(request))
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    name = engine.settings.name
    if body.indice_name is not None and body.indice_name != name:
        raise HTTPException(404, f"unknown index {body.indice_name!r}; this server has {name!r}")
    check_k(body.num_images, engine.settings)
    given = [name for name in ("text", "image", "embedding_input") if getattr(body, name) is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of text, image, embedding_input (got {', '.join(given) or 'none'})")
    if body.text is not None:
        if not re.search(NON_BLANK, body.text):
            raise HTTPException(422, "text is empty")
        vector = (await engine.embed_texts([body.text]))[0][0]
    elif body.image is not None:
        upload = await engine.decode(decode_base64(body.image, "image"), "image")
        vector = (await engine.embed_images([upload]))[0]
    else:
        vector = engine.query_vector(body.embedding_input)
    hits = await engine.search(vector, body.modality, body.num_images)
    if body.deduplicate and len(hits) > 1:
        hits = _deduplicate(await engine.vectors([h.item.id for h in hits]), hits)
    return [_result(request, engine, hit) for hit in hits]


def _deduplicate(vectors: np.ndarray, hits: list[Hit]) -> list[Hit]:
    """Keep each hit unless a better-ranked kept hit's embedding (row of `vectors`) is within the duplicate threshold."""
    kept: list[int] = []
    for n in range(len(hits)):
        if not kept or float(np.max(vectors[kept] @ vectors[n])) <= DEDUP_THRESHOLD:
            kept.append(n)
    return [hits[n] for n in kept]


def _result(request: Request, engine: Engine, hit: Hit) -> KnnResult:
    item = hit.item
    image_id = item.id if item.modality == "image" else item.metadata.get("image_id")
    url = str(request.url_for("item_image", item_id=image_id)) if isinstance(image_id, int) else None
    return KnnResult(id=item.id, similarity=hit.score, caption=item.caption, url=url)
