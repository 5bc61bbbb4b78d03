"""Shared route dependencies and checks (readiness, limits).

The dependencies are `async def`: FastAPI would run plain `def` ones in its thread pool, a thread hop
per request for a dictionary lookup.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from service.engine import Engine
from service.schemas import Problem
from service.settings import Settings


async def get_engine(request: Request) -> Engine:
    """The loaded engine, or 503 while the service is starting or stopping."""
    engine = request.app.state.engine
    if engine is None or not request.app.state.ready:
        raise HTTPException(503, "the service is not ready (model and index loading)", headers={"Retry-After": "1"})
    return engine


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def check_k(k: int, settings: Settings) -> None:
    """1 ≤ k ≤ max_k, else 422."""
    if not 1 <= k <= settings.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {k}")


def check_count(n: int, limit: int, what: str) -> None:
    """At most `limit` inputs in one request (the schema's maxItems), else 422."""
    if n > limit:
        raise HTTPException(422, f"{n} {what} in one request; the limit is {limit}")


_MEANING = {
    400: "Malformed request: invalid JSON, base64 or multipart, or an unreadable image",
    401: "Missing or invalid API key",
    403: "Writes are disabled: the server has no API key",
    404: "No such item (or index)",
    409: "The index is read-only (memory-mapped)",
    413: "Body or image over the size limits",
    415: "Unsupported content type or image format",
    422: "Invalid fields: see `detail` and `errors`",
    503: "Loading, shutting down, the encode queue is full, or the Milvus index is unavailable: retry after "
         "`Retry-After` seconds",
    507: "The server's disk is full: nothing was stored; retry after `Retry-After` seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the error statuses a route can answer, each a `Problem` body."""
    return {code: {"model": Problem, "description": _MEANING[code]} for code in codes}
