"""Run the service programmatically (what `retrieval serve` and `retrieval demo` call)."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.engine import load_engine
from service.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
        log_level: str = "info") -> None:
    """Load model and index (raising `UserError` before binding the port if they do not match), then serve
    until interrupted; pending index changes are written on shutdown."""
    engine = load_engine(settings)
    app = create_app(settings, engine=engine)
    log.info("serving %s on http://%s:%d", settings.index_dir, host, port)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level,
                timeout_graceful_shutdown=10)
