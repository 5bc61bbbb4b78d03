"""From a search request to a page of hits, shared by every search route (JSON, upload, batch).

A query becomes one normalised vector: a text or an image embedding, a raw embedding, a stored item's own
embedding ("more like this", the item left out of its results), or the weighted sum of a text's and an
image's normalised embeddings, normalised again (`text_weight` for the text, the rest for the image).
The options then pick the page: a filter restricts the index search itself, `offset` and `k` cut the
ranking, `min_score` drops what is not similar enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from retrieval.index import Hit
from service.engine import Engine, Upload
from service.images import decode_base64
from service.search_schemas import SearchOptions, SearchRequest, SearchResult

DEFAULT_TEXT_WEIGHT = 0.5


@dataclass
class Query:
    """A query vector and what the response reports about it."""

    vector: np.ndarray
    truncated: bool = False
    exclude: int | None = None  # the stored item a "more like this" query came from


def combine(text: np.ndarray, image: np.ndarray, text_weight: float) -> np.ndarray:
    """The normalised weighted sum of two normalised embeddings (422 when they cancel out)."""
    mixed = text_weight * text + (1.0 - text_weight) * image
    norm = float(np.linalg.norm(mixed))
    if norm < 1e-6:
        raise HTTPException(422, "the text and image embeddings cancel out at this text_weight; change it")
    return (mixed / norm).astype(np.float32)


async def text_and_image(engine: Engine, text: str | None, upload: Upload | None, weight: float | None) -> Query:
    """A text query, an image query, or both combined."""
    truncated = False
    vector = None
    if text is not None:
        vectors, flags = await engine.embed_texts([text])
        vector, truncated = vectors[0], flags[0]
    if upload is not None:
        image = (await engine.embed_images([upload]))[0]
        weight = DEFAULT_TEXT_WEIGHT if weight is None else weight
        vector = image if vector is None else combine(vector, image, weight)
    return Query(vector, truncated)


async def resolve(engine: Engine, body: SearchRequest) -> Query:
    """The query vector of a JSON search body (exactly one query shape, checked by the model)."""
    if body.embedding is not None:
        return Query(engine.query_vector(body.embedding))
    if body.item_id is not None:
        return Query(await engine.item_vector(body.item_id), exclude=body.item_id)
    upload = None
    if body.image_b64 is not None:
        upload = await engine.decode(decode_base64(body.image_b64), "image_b64")
    return await text_and_image(engine, body.text, upload, body.text_weight)


async def run(engine: Engine, query: Query, options: SearchOptions) -> list[Hit]:
    """The page of hits the options ask for."""
    settings = engine.settings
    if not 1 <= options.k <= settings.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {options.k}")
    if not 0 <= options.offset <= settings.max_offset:
        raise HTTPException(422, f"offset must be between 0 and {settings.max_offset}, got {options.offset}")
    allowed = await engine.matching(options.target, options.filter) if options.filter else None  # {}: no filter
    hits = await engine.search(query.vector, options.target, options.k, options.offset, allowed, query.exclude)
    if options.min_score is not None:
        hits = [hit for hit in hits if hit.score >= options.min_score]
    return hits


def results(hits: list[Hit]) -> list[SearchResult]:
    """Index hits → response items."""
    return [
        SearchResult(id=h.item.id, score=h.score, modality=h.item.modality, caption=h.item.caption,
                     uri=h.item.uri, metadata=h.item.metadata)
        for h in hits
    ]
