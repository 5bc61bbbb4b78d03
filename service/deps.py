"""Shared route dependencies and checks (readiness, limits).

The dependencies are `async def`: FastAPI would run plain `def` ones in its thread pool, a thread hop
per request for a dictionary lookup.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from service.engine import Engine
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


def check_batch(n: int, settings: Settings, what: str) -> None:
    """A non-empty batch of at most max_texts inputs (422 empty, 413 too many)."""
    if n == 0:
        raise HTTPException(422, f"no {what} given")
    if n > settings.max_texts:
        raise HTTPException(413, f"{n} {what} in one request; the limit is {settings.max_texts}")


def check_texts(texts: list[str], settings: Settings, field: str = "texts") -> None:
    """A batch of non-empty texts."""
    check_batch(len(texts), settings, field)
    for n, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"{field}[{n}] is empty")
