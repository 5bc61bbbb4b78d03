"""Search request bodies: the query (text | image | embedding | stored item, or text + image combined) and the
options every search route shares (target, k, offset, min_score, filter).

Request models are strict (`"10"` is not a k) and their JSON Schema states every rule the server enforces:
absent-but-not-null optional fields, the exactly-one-of query (`oneOf`), ranges. Limits that come from the
server's settings (max_k, the embedding dimension, …) are marked `x-limit-*` and filled in by
`service.openapi` when the schema is served, so a client reads the numbers this server enforces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from retrieval.index.filters import FILTER_SCHEMA, FilterError, check_filter
from retrieval.json_rules import MAX_DEPTH, NUMBER_RULE, NUMBER_SCHEMA, value_problem
from retrieval.store import MAX_ID

Target = Literal["image", "text"]
NON_BLANK = r"[^ \t\n\r\f\v]"  # the text has something besides (ASCII) whitespace
QUERY_FIELDS = ("text", "image_b64", "embedding", "item_id")
COMBINED = ("text", "image_b64")
QUERY_SHAPES = (("text",), ("image_b64",), ("embedding",), ("item_id",), COMBINED)


def optional(json_schema_extra: dict[str, Any] | None = None, **constraints: Any) -> Any:
    """A field that may be left out but not sent as null: the schema has no null type and no default."""

    def schema(node: dict[str, Any]) -> None:
        node.pop("default", None)
        node.update(json_schema_extra or {})

    return Field(None, json_schema_extra=schema, **constraints)


def limit(name: str, keyword: str = "maximum") -> dict[str, str]:
    """Schema marker: `keyword` takes the value of setting `name` (see service.openapi)."""
    return {f"x-limit-{keyword}": name}


def _checked_filter(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return check_filter(spec)
    except FilterError as err:
        raise ValueError(str(err)) from None


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; so does the server (strict models would refuse it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _checked_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    problem = value_problem(metadata)
    if problem:
        raise ValueError(problem)
    return metadata


# A metadata value, recursively: the component `service.openapi` serves, so the schema states the number rule
# at every depth (the depth limit and valid Unicode are said in words: JSON Schema cannot say them). The
# reference is a marker that `service.openapi` turns into a `$ref` (pydantic resolves `$ref`s it did not make).
_VALUE_REF = {"x-component": "MetadataValue"}
METADATA_COMPONENTS: dict[str, Any] = {"MetadataValue": {"anyOf": [
    {"type": "string"}, NUMBER_SCHEMA, {"type": "boolean"}, {"type": "null"},
    {"type": "array", "items": _VALUE_REF}, {"type": "object", "additionalProperties": _VALUE_REF},
]}}
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": _VALUE_REF,
    "description": f"a JSON object; at any depth (at most {MAX_DEPTH} levels), {NUMBER_RULE}, and strings and keys "
                   "are valid Unicode",
}
Integer = Annotated[int, BeforeValidator(_integral)]
Metadata = Annotated[dict[str, Any], AfterValidator(_checked_metadata), WithJsonSchema(METADATA_SCHEMA)]
Filter = Annotated[dict[str, Any], AfterValidator(_checked_filter), WithJsonSchema(FILTER_SCHEMA)]
NonBlank = Annotated[str, Field(min_length=1, pattern=NON_BLANK)]
IMAGE_BASE64 = {"format": "byte", "contentMediaType": "image/*"}  # base64 (OpenAPI's "byte") of an image file
NOT_ZERO = {"contains": {"not": {"const": 0}}}  # a vector with a direction: some element is not zero


class SearchOptions(BaseModel):
    """What to search and how many: shared by every search route."""

    model_config = ConfigDict(extra="forbid", strict=True)
    target: Target = Field("image", description="which index to search: images or texts")
    k: Integer = Field(10, description="results to return", json_schema_extra={"minimum": 1, **limit("max_k")})
    offset: Integer = Field(0, description="results to skip first (paging: the next page starts at offset + k)",
                        json_schema_extra={"minimum": 0, **limit("max_offset")})
    min_score: float = optional(ge=-1, le=1, description="drop results whose cosine similarity is below this")
    filter: Filter = optional(description=FILTER_SCHEMA["description"])


def _one_query(schema: dict[str, Any]) -> None:
    """Exactly one query shape (`oneOf`): each branch requires its fields and forbids the other query fields."""
    fields = (*QUERY_FIELDS, "text_weight")
    schema["oneOf"] = [
        {"required": list(shape),
         "properties": {f: False for f in fields if f not in shape and not (f == "text_weight" and shape == COMBINED)}}
        for shape in QUERY_SHAPES
    ]


class SearchRequest(SearchOptions):
    """One query — `text`, `image_b64`, `embedding` or `item_id`, or `text` + `image_b64` combined — and options."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_query)
    text: NonBlank = optional(examples=["two blue squares"])
    image_b64: str = optional(min_length=1, description="base64 image bytes (a data: URL prefix is accepted)",
                              json_schema_extra=IMAGE_BASE64)
    embedding: list[float] = optional(description="a query vector of the model's dimension (normalised here)",
                                      json_schema_extra=limit("dim", "minItems") | limit("dim", "maxItems") | NOT_ZERO)
    item_id: Integer = optional(ge=1, le=MAX_ID, description="a stored item: more like it (the item itself is left out)")
    text_weight: float = optional(ge=0, le=1, description="with text + image_b64: the text's share of the combined "
                                                          "query (default 0.5)")

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchRequest:
        given = tuple(f for f in QUERY_FIELDS if f in self.model_fields_set)
        if given not in QUERY_SHAPES:
            raise ValueError(f"give exactly one of {', '.join(QUERY_FIELDS)} (or text + image_b64 together); "
                             f"got {', '.join(given) or 'none'}")
        if "text_weight" in self.model_fields_set and given != COMBINED:
            raise ValueError("text_weight needs both text and image_b64")
        return self


class BatchSearchRequest(BaseModel):
    """Several searches in one request; each has its own query and options."""

    model_config = ConfigDict(extra="forbid", strict=True)
    queries: list[SearchRequest] = Field(
        min_length=1, json_schema_extra=limit("max_texts", "maxItems"),
        examples=[[{"text": "a red circle", "k": 3}, {"item_id": 1, "target": "text", "k": 3}]],
    )


class ImageSearchForm(SearchOptions):
    """The form fields of POST /v1/search/image besides the uploaded `file`."""

    text: NonBlank = optional(description="also a text: one combined query with the image")
    text_weight: float = optional(ge=0, le=1, description="with text: the text's share of the combined query "
                                                          "(default 0.5; no effect without a text)")


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


class BatchSearchResponse(BaseModel):
    """One result list per query, in the order of the queries."""

    results: list[list[SearchResult]]
    took_ms: float
