"""`create_app(settings) -> FastAPI`: routers, middleware, error handling and the lifespan that loads the model.

Heavy objects live on `app.state` (no module globals): `settings`, `metrics`, and `engine` once the
lifespan has loaded it. `/readyz` answers 503 until then and again while shutting down.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from retrieval.index import ReadOnlyIndexError
from retrieval.store import storage_full
from service import openapi
from service.adding import InvalidItems
from service.batching import QueueFull
from service.engine import Engine, load_engine
from service.images import ImageRejected
from service.limits import AdmissionLimit, BodySizeLimit
from service.metrics import Metrics, MetricsMiddleware
from service.routes import clip_compat, embed, health, info, items, search, web
from service.schemas import ItemError, Problem
from service.search_schemas import METADATA_COMPONENTS, NON_BLANK
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The service app. `engine`: already loaded (the CLI loads it first, to fail before binding the port)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = engine if engine is not None else await run_in_threadpool(load_engine, settings)
        loaded.start(app.state.metrics)
        app.state.engine = loaded
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await loaded.stop()

    app = FastAPI(
        title="ENN cross-modal retrieval",
        version="1.0",
        summary="Text↔image search over FAISS indexes of ENN encoder embeddings.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.engine = None
    app.state.ready = False
    for module in (health, info, embed, search, items, clip_compat, web):
        app.include_router(module.router)
    web.mount_static(app)
    openapi.install(app, components={**items.COMPONENTS, **METADATA_COMPONENTS})
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdmissionLimit, max_inflight=settings.max_inflight)  # before reading any body
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: sees 413s too
    return app


def _field(loc: tuple) -> str:
    """A pydantic error location as a user writes it: `texts[2]`, `queries[0].k`, `filter.year` (no `body`)."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path") and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or "body"


def _message(error: dict) -> str:
    """pydantic's message, in words for the rules a user hits most."""
    if error.get("type") in ("string_too_short", "string_pattern_mismatch") and error.get("ctx", {}).get(
        "pattern", NON_BLANK
    ) == NON_BLANK:
        return "is empty (nothing but white space)"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def _leaf_routes(routes: list) -> Iterator:
    """Routes, with those of included routers listed in their place."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        yield from _leaf_routes(inner) if inner is not None else (route,)


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names only the first route's)."""
    methods = set()
    for route in _leaf_routes(app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _add_error_handlers(app: FastAPI) -> None:
    """Bad input → 4xx with a one-line `detail` (and `errors`, one per bad field or item); anything unexpected
    → 500 without a traceback."""

    def problem(status: int, detail: str, errors: list[ItemError] = (), headers: dict | None = None) -> JSONResponse:
        body = Problem(detail=detail, errors=list(errors)).model_dump()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [ItemError(field=_field(tuple(e.get("loc", ()))), detail=_message(e)) for e in exc.errors()]
        return problem(422, "; ".join(f"{e.field}: {e.detail}" for e in errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return problem(405, f"{request.method} is not allowed here", headers={"Allow": _allowed_methods(app, request)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(InvalidItems)
    async def invalid_items(request: Request, exc: InvalidItems) -> JSONResponse:
        return problem(exc.status, exc.detail, exc.errors)

    @app.exception_handler(ImageRejected)
    async def bad_image(request: Request, exc: ImageRejected) -> JSONResponse:
        return problem(exc.status, exc.message)

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        return problem(503, f"overloaded: {exc}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(ReadOnlyIndexError)
    async def read_only(request: Request, exc: ReadOnlyIndexError) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(sqlite3.Error)
    @app.exception_handler(OSError)
    async def storage(request: Request, exc: Exception) -> JSONResponse:
        if storage_full(exc):  # nothing was committed: the write is refused whole, reads go on
            log.warning("refused %s %s: %s", request.method, request.url.path, exc)
            return problem(507, "the server's disk is full: nothing of this request was stored; retry once space "
                                "is freed", headers={"Retry-After": "60"})
        return await unexpected(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal error (logged on the server)")
