"""Request and response bodies of every route (pydantic): the OpenAPI schema is the API documentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.search_schemas import (
    IMAGE_BASE64,
    NON_BLANK,
    NOT_ZERO,
    Integer,
    Metadata,
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


EMBEDDING_NOTE = ("a precomputed embedding of the model's dimension (normalised here), stored without running the "
                  "encoder; it must come from the served model (the one named by `model` in GET /v1/info): the server "
                  "cannot check that, and vectors of another model make wrong neighbours")


def _item_shapes(schema: dict[str, Any]) -> None:
    """A text item has `text` (its `embedding` optional); an image item has `modality: image` and an `embedding`,
    no `text` (`oneOf`)."""
    schema["oneOf"] = [
        {"required": ["text"], "properties": {"modality": {"const": "text"}, "caption": False, "uri": False}},
        {"required": ["modality", "embedding"], "properties": {"modality": {"const": "image"}, "text": False}},
    ]


class NewItemBody(BaseModel):
    """One item of the JSON `items` form: a text (encoded here unless `embedding` is given) or an image known by
    its precomputed embedding (and optionally where it lives: `uri`, and its `caption`)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_item_shapes)
    modality: Target = Field("text", description="`text` (the default) or `image`")
    text: NonBlank = optional(description="text items: the text (stored as the item's caption)")
    caption: str = optional(description="image items: a caption shown with the results")
    # A scheme is required: a bare path would name a file on the server, which GET /v1/items/{id}/image serves.
    uri: str = optional(pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*:", max_length=4096,
                        description="image items: where the image lives, a URL with a scheme (`https://…`, "
                                    "`s3://…`); stored and returned, never fetched or served by this server")
    embedding: list[float] = optional(description=EMBEDDING_NOTE,
                                      json_schema_extra=limit("dim", "minItems") | limit("dim", "maxItems") | NOT_ZERO)
    metadata: Metadata = optional(description="the item's metadata (a JSON object)")

    @model_validator(mode="after")
    def _one_shape(self) -> NewItemBody:
        if self.modality == "text":
            if self.text is None:
                raise ValueError("a text item needs `text`")
            if self.caption is not None or self.uri is not None:
                raise ValueError("`caption` and `uri` are for image items (a text item's caption is its `text`)")
        else:
            if self.text is not None:
                raise ValueError("an image item has no `text` (give `caption`)")
            if self.embedding is None:
                raise ValueError("an image item sent as JSON needs its `embedding` (send image files as multipart)")
        return self


def _json_forms(schema: dict[str, Any]) -> None:
    """Exactly one of the two forms (`oneOf`): `texts` (+ `metadata`), or `items`."""
    schema["oneOf"] = [
        {"required": ["texts"], "properties": {"items": False}},
        {"required": ["items"], "properties": {"texts": False, "metadata": False}},
    ]


class AddItemsRequest(BaseModel):
    """Items to add as JSON (images as files are added as multipart): `texts` (+ `metadata`), each encoded here;
    or `items`, each with its own fields, optionally with a precomputed `embedding` (then nothing is encoded:
    bulk ingest of embeddings computed offline)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_json_forms)
    texts: list[NonBlank] = optional(min_length=1, description="texts to add (the short form)",
                                     json_schema_extra=limit("max_items_per_request", "maxItems"))
    metadata: list[Metadata] = optional(description="with `texts`: one object per text, in the same order (as "
                                                          "many as texts; an empty list is the same as none)",
                                              json_schema_extra=limit("max_items_per_request", "maxItems"))
    items: list[NewItemBody] = optional(
        min_length=1, description="items, each with its own fields; text items and image items may be mixed",
        json_schema_extra=limit("max_items_per_request", "maxItems"),
        examples=[[{"text": "a small green triangle", "metadata": {"shelf": 2}}, {"text": "a red circle"}]],
    )

    @model_validator(mode="after")
    def _one_form(self) -> AddItemsRequest:
        if (self.texts is None) == (self.items is None):
            raise ValueError("give either `texts` (with optional `metadata`) or `items`, not both")
        if self.items is not None and self.metadata is not None:
            raise ValueError("`metadata` goes with `texts`; with `items`, give each item its own `metadata`")
        return self

    @property
    def count(self) -> int:
        """Items in the request."""
        return len(self.texts if self.texts is not None else self.items)


class MetadataPatch(BaseModel):
    """Metadata changes: each key is set to its value, or removed when the value is null."""

    model_config = ConfigDict(extra="forbid", strict=True)
    metadata: Metadata = Field(examples=[{"album": "holidays", "draft": None}])


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
    truncated: list[bool] = Field(default_factory=list, description="per item of a JSON body: its text was cut to the "
                                                                     "context length for encoding (always false for "
                                                                     "images and items sent with an embedding)")


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
