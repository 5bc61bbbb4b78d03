"""`POST /v1/embed/text`, `POST /v1/embed/image`: embeddings without searching."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.auth import require_read_key
from service.deps import check_count, error_responses, get_engine
from service.engine import Engine
from service.forms import IMAGE_FILE, multipart_body, read_form
from service.schemas import EmbedResponse, EmbedTextRequest
from service.search_schemas import limit

router = APIRouter(prefix="/v1/embed", tags=["embed"], dependencies=[Depends(require_read_key)])
ERRORS = error_responses(400, 401, 413, 415, 422, 503)
_FILES = {"type": "array", "items": IMAGE_FILE, "minItems": 1, "description": "one or more images",
          **limit("max_texts", "maxItems")}
_IMAGE_BODY = multipart_body({"files": _FILES}, ["files"], files=("files",))


@router.post("/text", response_model=EmbedResponse, responses=ERRORS)
async def embed_text(body: EmbedTextRequest, engine: Engine = Depends(get_engine)) -> EmbedResponse:
    """L2-normalised embeddings of texts (texts over the context length are truncated and flagged)."""
    check_count(len(body.texts), engine.settings.max_texts, "texts")
    vectors, truncated = await engine.embed_texts(body.texts)
    return EmbedResponse(
        embeddings=vectors.tolist(), dim=vectors.shape[1], model=engine.encoder.fingerprint, truncated=truncated
    )


@router.post("/image", response_model=EmbedResponse, responses=ERRORS, openapi_extra=_IMAGE_BODY)
async def embed_image(request: Request, engine: Engine = Depends(get_engine)) -> EmbedResponse:
    """L2-normalised embeddings of uploaded images (multipart field `files`, repeatable)."""
    form = await read_form(request, "files", engine.settings.max_texts, ())
    uploads = [await engine.decode(data, f"files[{n}] ({name})") for n, (name, data) in enumerate(form.files)]
    vectors = await engine.embed_images(uploads)
    return EmbedResponse(
        embeddings=vectors.tolist(), dim=vectors.shape[1], model=engine.encoder.fingerprint,
        truncated=[False] * len(uploads),
    )
