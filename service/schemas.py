"""Request and response bodies of every route (pydantic): the OpenAPI schema is the API documentation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Target = Literal["image", "text"]


class Status(BaseModel):
    """Liveness / readiness."""

    status: str = Field(examples=["ok"])


class Problem(BaseModel):
    """Every error: a message a user can act on."""

    detail: str | list[Any]


class EmbedTextRequest(BaseModel):
    """Texts to embed."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="one or more non-empty texts (at most max_texts)", examples=[["a red circle"]])


class EmbedResponse(BaseModel):
    """One L2-normalised embedding per input, in order."""

    embeddings: list[list[float]]
    dim: int
    model: str = Field(description="fingerprint of the model that produced the embeddings")
    truncated: list[bool] = Field(description="per input: the text was cut to the context length (always false for images)")


class SearchRequest(BaseModel):
    """Exactly one query (text, base64 image, or a raw embedding) against one target index."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, examples=["two blue squares"])
    image_b64: str | None = Field(None, description="base64 image bytes (a data: URL prefix is accepted)")
    embedding: list[float] | None = Field(None, description="a query vector of the model's dimension (normalised here)")
    target: Target = Field("image", description="which index to search: images or texts")
    k: int = Field(10, description="results to return, 1 ≤ k ≤ max_k")


class SearchResult(BaseModel):
    """One hit: the stored item and its cosine similarity to the query."""

    id: int
    score: float
    modality: Target
    caption: str | None = None
    uri: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    """Hits, best first."""

    results: list[SearchResult]
    took_ms: float
    truncated: bool = Field(False, description="the query text was cut to the context length")


class AddTextsRequest(BaseModel):
    """Texts to add as items (JSON form of POST /v1/items; images are added as multipart)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(examples=[["a small green triangle"]])
    metadata: list[dict[str, Any]] | None = Field(None, description="one object per text (optional)")


class AddItemsResponse(BaseModel):
    """Ids of the new items, in input order; they are durable once this response is sent."""

    ids: list[int]
    truncated: list[bool] = Field(default_factory=list, description="per text item: cut to the context length")


class Item(BaseModel):
    """A stored item."""

    id: int
    modality: Target
    caption: str | None = None
    uri: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created: str
    image_url: str | None = Field(None, description="where the image bytes are served (image items)")


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


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body (as `ClipClient` sends it); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    image: str | None = Field(None, description="base64 image")
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: Target = "image"
    num_images: int = 40
    num_result_ids: int | None = None
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
