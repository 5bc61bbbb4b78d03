"""API-key auth as FastAPI dependencies: `Authorization: Bearer KEY`, compared in constant time.

Writes always need the key (and are refused when the server has none configured); reads need it only
with `auth_reads`. The dependencies are `async def`: FastAPI would run plain `def` ones in its thread
pool, a thread hop per request for a header check.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from service.settings import Settings

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _check(request: Request, settings: Settings) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer KEY'", headers=_CHALLENGE)
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        raise HTTPException(401, "invalid API key", headers=_CHALLENGE)


async def require_api_key(request: Request) -> None:
    """Dependency for writes: a valid key, and a server that has one configured."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        raise HTTPException(403, "writes are disabled: start the server with --api-key or RETRIEVAL_API_KEY")
    _check(request, settings)


async def require_read_key(request: Request) -> None:
    """Dependency for reads: a valid key when the server is configured with `auth_reads`."""
    settings: Settings = request.app.state.settings
    if settings.auth_reads and settings.api_key is not None:
        _check(request, settings)
