"""Schemathesis hooks for tests/service/test_api_fuzz.py (loaded by the CLI through SCHEMATHESIS_HOOKS).

They teach the generator two things JSON Schema cannot express, so that "schema-valid" requests really are:
- what an image is: file parts declared `image/*` and base64 strings (`format: byte`, only images in this
  API) get small real PNGs, not random bytes;
- the one cross-field rule of POST /v1/items: `metadata` (JSON) and `captions` (multipart) come one per item,
  or not at all (the schema says so in words; tests/service/test_api_items.py checks the rule itself).
"""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


_colours = st.tuples(*(st.integers(0, 255),) * 3)
_sizes = st.tuples(st.integers(1, 48), st.integers(1, 48))
PNGS = st.builds(_png, _colours, _sizes)

schemathesis.openapi.media_type("image/*", PNGS)
schemathesis.openapi.format("byte", PNGS.map(lambda data: base64.b64encode(data).decode()))


@schemathesis.hook("filter_case").apply_to(path="/v1/items", method="POST")
def one_per_item(ctx, case) -> bool:
    """Keep bodies whose per-item lists match the items in number, and no negative multipart ones (multipart
    carries no types; see schemathesis.toml)."""
    if case.media_type == "multipart/form-data" and case.meta is not None and case.meta.generation.mode.is_negative:
        return False
    body = case.body
    if not isinstance(body, dict):
        return True
    items = body.get("texts", body.get("files"))
    if items is None:
        return True
    count = len(items) if isinstance(items, list) else 1  # one file part may come as a single value
    metadata, captions = body.get("metadata"), body.get("captions")
    if isinstance(captions, str):
        captions = [captions]
    return all(not isinstance(given, list) or len(given) in (0, count) for given in (metadata, captions))
