"""The served OpenAPI schema: FastAPI's, with this server's limits filled in.

Request models mark limits that depend on the server (`x-limit-maximum: max_k`, `x-limit-maxItems: dim`, see
`service.search_schemas.limit`); here each marker becomes the real keyword with this server's value, so a
generated client or a fuzzer learns the bounds the server enforces. The embedding dimension is known once
the model is loaded: until then `minItems` is 1 and the schema is not cached.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

MARKER = "x-limit-"
FALLBACK = {"minItems": 1}  # for a limit not known yet (the dimension, before the model is loaded)


def fill_limits(node: Any, limits: dict[str, int | None]) -> None:
    """Replace every `x-limit-KEYWORD: setting` marker in a schema by `KEYWORD: value`, and every
    `x-component: NAME` by a `$ref` to that component (in place)."""
    if isinstance(node, list):
        for child in node:
            fill_limits(child, limits)
    if not isinstance(node, dict):
        return
    if "x-component" in node:
        node["$ref"] = f"#/components/schemas/{node.pop('x-component')}"
    for key in [k for k in node if isinstance(k, str) and k.startswith(MARKER)]:
        keyword, value = key[len(MARKER):], limits.get(node.pop(key))
        if value is None:
            value = FALLBACK.get(keyword)
        if value is not None:
            node[keyword] = value
    for child in node.values():
        fill_limits(child, limits)


def install(app: FastAPI, components: dict[str, Any] | None = None) -> None:
    """Serve the filled-in schema at /openapi.json (and to `app.openapi()` callers such as the docs generator).

    `components`: schemas that hand-written request bodies (`openapi_extra`) refer to by `$ref`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(copy.deepcopy(components or {}))
        settings, engine = app.state.settings, app.state.engine
        limits: dict[str, int | None] = {
            name: getattr(settings, name) for name in ("max_k", "max_offset", "max_texts", "max_items_per_request")
        }
        limits["dim"] = engine.index.dim if engine is not None else None
        fill_limits(schema, limits)
        if engine is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi
