"""`create_app(settings) -> FastAPI`: routers, middleware, error handling and the lifespan that loads the model.

Heavy objects live on `app.state` (no module globals): `settings`, `metrics`, and `engine` once the
lifespan has loaded it. `/readyz` answers 503 until then and again while shutting down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from retrieval.index import ReadOnlyIndexError
from service.batching import QueueFull
from service.engine import Engine, load_engine
from service.images import ImageRejected
from service.limits import BodySizeLimit
from service.metrics import Metrics, MetricsMiddleware
from service.routes import clip_compat, embed, health, info, items, search, web
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
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: sees 413s too
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Bad input → 4xx with a one-line `detail`; anything unexpected → 500 without a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(ImageRejected)
    async def bad_image(request: Request, exc: ImageRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": f"overloaded: {exc}; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(ReadOnlyIndexError)
    async def read_only(request: Request, exc: ReadOnlyIndexError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)
