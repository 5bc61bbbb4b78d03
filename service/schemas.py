"""Request and response bodies of every route (pydantic): the OpenAPI schema is the API documentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.search_schemas import (
    IMAGE_BASE64,
    NON_BLANK,
    NOT_ZERO,
    Integer,
    NonBlank,
    Target,
    limit,
    optional,
)


class Status(BaseModel):
    """Liveness / readiness."""

    status: str = Field(examples=["ok"])


class ItemError(BaseModel):
    """What is wrong with one input of a request (an item to add, a text, a query)."""

    field: str = Field(description="where: `texts[2]`, `files[0]`, `queries[1].k`, …")
    detail: str


class Problem(BaseModel):
    """Every error: a message a user can act on; invalid requests also list each bad input."""

    detail: str
    errors: list[ItemError] = Field(default_factory=list)


class EmbedTextRequest(BaseModel):
    """Texts to embed."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[NonBlank] = Field(min_length=1, description="texts with something besides white space",
                                  examples=[["a red circle"]], json_schema_extra=limit("max_texts", "maxItems"))


class EmbedResponse(BaseModel):
    """One L2-normalised embedding per input, in order."""

    embeddings: list[list[float]]
    dim: int
    model: str = Field(description="fingerprint of the model that produced the embeddings")
    truncated: list[bool] = Field(description="per input: the text was cut to the context length (always false for images)")


class AddTextsRequest(BaseModel):
    """Texts to add as items (JSON form of POST /v1/items; images are added as multipart)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[NonBlank] = Field(min_length=1, examples=[["a small green triangle"]],
                                  json_schema_extra=limit("max_items_per_request", "maxItems"))
    metadata: list[dict[str, Any]] = optional(description="one object per text, in the same order (as many as "
                                                          "texts; an empty list is the same as none)",
                                              json_schema_extra=limit("max_items_per_request", "maxItems"))


class MetadataPatch(BaseModel):
    """Metadata changes: each key is set to its value, or removed when the value is null."""

    model_config = ConfigDict(extra="forbid", strict=True)
    metadata: dict[str, Any] = Field(examples=[{"album": "holidays", "draft": None}])


class Item(BaseModel):
    """A stored item."""

    id: int
    modality: Target
    caption: str | None = None
    uri: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created: str
    image_url: str | None = Field(None, description="where the image bytes are served (image items)")


class ItemList(BaseModel):
    """One page of items in id order, and how many items match in all."""

    items: list[Item]
    total: int


class AddItemsResponse(BaseModel):
    """Ids of the new items, in input order; they are durable once this response is sent."""

    ids: list[int]
    truncated: list[bool] = Field(default_factory=list, description="per text item: cut to the context length")


class Deleted(BaseModel):
    """Result of DELETE /v1/items/{id}."""

    deleted: int


class IndexInfo(BaseModel):
    """One modality's index."""

    kind: str
    count: int
    search_params: dict[str, Any]
    recall_at_10: float | None
    deleted_pending_rebuild: int


class Info(BaseModel):
    """Model identity, index kinds and sizes, limits."""

    name: str
    model: str = Field(description="model fingerprint (the index was built by the same model)")
    dim: int
    context_length: int
    runtime: str
    metric: str
    read_only: bool
    indexes: dict[str, IndexInfo]
    limits: dict[str, int]
    auth: dict[str, bool]


def _one_knn_query(schema: dict[str, Any]) -> None:
    """Exactly one of text, image, embedding_input is non-null (`oneOf`); image_url is refused unless null."""
    kinds = {"text": {"type": "string", "pattern": NON_BLANK}, "image": {"type": "string", "minLength": 1, **IMAGE_BASE64},
             "embedding_input": schema["properties"]["embedding_input"]["anyOf"][0]}
    schema["oneOf"] = [
        {"required": [name], "properties": {other: kinds[other] if other == name else {"type": "null"} for other in kinds}}
        for name in kinds
    ]


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body (as `ClipClient` sends it, unset fields null); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_one_knn_query)
    text: str | None = None
    image: str | None = Field(None, description="base64 image", json_schema_extra=IMAGE_BASE64)
    image_url: None = Field(None, description="not supported (the server does not fetch URLs): send `image`")
    embedding_input: list[float] | None = Field(
        None, json_schema_extra=limit("dim", "minItems") | limit("dim", "maxItems") | NOT_ZERO
    )
    modality: Target = "image"
    num_images: Integer = Field(40, json_schema_extra={"minimum": 1, **limit("max_k")})
    num_result_ids: Integer | None = None
    indice_name: str | None = None
    deduplicate: bool = False
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: Any = None
    aesthetic_weight: Any = None


class KnnResult(BaseModel):
    """One clip-retrieval result."""

    id: int
    similarity: float
    caption: str | None = None
    url: str | None = None
