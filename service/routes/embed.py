"""`POST /v1/embed/text`, `POST /v1/embed/image`: embeddings without searching."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile

from service.auth import require_read_key
from service.deps import check_batch, check_texts, get_engine
from service.engine import Engine
from service.schemas import EmbedResponse, EmbedTextRequest, Problem

router = APIRouter(prefix="/v1/embed", tags=["embed"], dependencies=[Depends(require_read_key)])
ERRORS = {code: {"model": Problem} for code in (400, 401, 413, 415, 422, 503)}


@router.post("/text", response_model=EmbedResponse, responses=ERRORS)
async def embed_text(body: EmbedTextRequest, engine: Engine = Depends(get_engine)) -> EmbedResponse:
    """L2-normalised embeddings of texts (texts over the context length are truncated and flagged)."""
    check_texts(body.texts, engine.settings)
    vectors, truncated = await engine.embed_texts(body.texts)
    return EmbedResponse(
        embeddings=vectors.tolist(), dim=vectors.shape[1], model=engine.encoder.fingerprint, truncated=truncated
    )


@router.post("/image", response_model=EmbedResponse, responses=ERRORS)
async def embed_image(
    files: list[UploadFile] = File(..., description="one or more images"), engine: Engine = Depends(get_engine)
) -> EmbedResponse:
    """L2-normalised embeddings of uploaded images (multipart field `files`, repeatable)."""
    check_batch(len(files), engine.settings, "files")
    uploads = [await engine.decode(await f.read(), f"files[{n}] ({f.filename})") for n, f in enumerate(files)]
    vectors = await engine.embed_images(uploads)
    return EmbedResponse(
        embeddings=vectors.tolist(), dim=vectors.shape[1], model=engine.encoder.fingerprint,
        truncated=[False] * len(uploads),
    )
