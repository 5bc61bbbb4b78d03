"""`GET /v1/info`: which model, which indexes, which limits."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import require_read_key
from service.deps import error_responses, get_engine
from service.engine import Engine
from service.schemas import Info

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[Depends(require_read_key)])


@router.get("/info", response_model=Info, responses=error_responses(401, 503))
async def info(engine: Engine = Depends(get_engine)) -> Info:
    """Model fingerprint, embedding dimension, index kinds and counts, request limits."""
    s = engine.settings
    index = await engine.info()
    return Info(
        name=s.name,
        model=engine.encoder.fingerprint,
        dim=index["dim"],
        context_length=engine.encoder.context_length,
        runtime=s.runtime,
        metric=index["metric"],
        read_only=index["read_only"],
        indexes=index["indexes"],
        limits={
            "max_k": s.max_k,
            "max_texts": s.max_texts,
            "max_items_per_request": s.max_items_per_request,
            "max_offset": s.max_offset,
            "max_inflight": s.max_inflight,
            "max_body_bytes": s.max_body_bytes,
            "max_image_pixels": s.max_image_pixels,
        },
        auth={"writes": s.api_key is not None, "reads": s.auth_reads},
    )
