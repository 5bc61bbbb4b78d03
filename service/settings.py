"""Service settings: one dataclass, filled from arguments and `RETRIEVAL_*` environment variables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import UserError

ENV_PREFIX = "RETRIEVAL_"


@dataclass
class Settings:
    """Everything `create_app` needs. Environment: RETRIEVAL_<FIELD> (e.g. RETRIEVAL_API_KEY, RETRIEVAL_MAX_K)."""

    index_dir: Path
    checkpoint: Path | None = None  # runtime torch: checkpoint file or run folder
    runtime: str = "torch"  # torch | onnx (encoders from `retrieval export --format onnx`)
    onnx_dir: Path | None = None  # runtime onnx: the export folder
    device: str = "auto"
    torch_threads: int | None = None  # intra-op threads for encoding (default: all cores but one)
    api_key: str | None = None  # required (Bearer) for writes; writes are refused when unset
    auth_reads: bool = False  # also require the key for searches, embeddings, info and item reads
    index_name: str | None = None  # name for clip-retrieval's /indices-list (default: the folder name)
    mmap: bool = False  # memory-map the FAISS files (IVF lists); the index is then read-only (a replica)
    memory_budget: str | None = None  # e.g. "4GiB": refuse to start when the index needs more RAM than this
    max_body_bytes: int = 16 << 20
    max_image_pixels: int = 40_000_000  # width × height, checked from the header before decoding
    max_texts: int = 256  # texts or images to embed, or queries in a batch search, per request
    # Items added by one POST /v1/items; the body limit holds too: 1000 items × 512-d embeddings written in full
    # float precision are ~11 MB of JSON, inside max_body_bytes (beyond it: 413, send smaller requests).
    max_items_per_request: int = 1000
    max_k: int = 1000
    max_offset: int = 10_000  # deepest search page start (a search ranks offset + k items)
    batch_max_size: int = 64  # encode work gathered into one forward pass
    batch_max_wait_ms: float = 2.0  # how long a batch waits for more work while other requests are in flight
    queue_size: int = 1024  # pending encode items before requests get 503 + Retry-After
    max_inflight: int = 64  # requests handled at once; more get 503 + Retry-After (probes are always served)
    snapshot_interval_s: float = 30.0  # how often pending index changes are written to the FAISS files
    milvus_timeout_s: float = 10.0  # index.backend milvus: the longest one Milvus call may take (then 503)
    milvus_uri: str | None = None  # index.backend milvus: reach Milvus here instead of the manifest's URI

    def __post_init__(self) -> None:
        self.index_dir = Path(self.index_dir)
        self.checkpoint = Path(self.checkpoint) if self.checkpoint else None
        self.onnx_dir = Path(self.onnx_dir) if self.onnx_dir else None
        if self.runtime not in ("torch", "onnx"):
            raise UserError(f"runtime must be torch or onnx, not {self.runtime!r}")
        for name in ("max_body_bytes", "max_image_pixels", "max_texts", "max_items_per_request", "max_k", "batch_max_size",
                     "queue_size", "max_inflight"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"setting {name} must be at least 1, got {getattr(self, name)!r}")
        if self.batch_max_wait_ms < 0 or self.snapshot_interval_s <= 0 or self.max_offset < 0 or self.milvus_timeout_s <= 0:
            raise UserError("batch_max_wait_ms and max_offset must be ≥ 0, snapshot_interval_s and milvus_timeout_s > 0")
        from retrieval.index.budget import parse_bytes

        parse_bytes(self.memory_budget)  # a bad size fails here, with the setting's value in the message
        if self.api_key == "":
            self.api_key = None
        if self.auth_reads and self.api_key is None:
            raise UserError("auth_reads needs an API key (--api-key or RETRIEVAL_API_KEY)")

    @property
    def name(self) -> str:
        """The index name clip-retrieval clients pass as `indice_name`."""
        return self.index_name or self.index_dir.resolve().name

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **given: Any) -> Settings:
        """Settings from keyword arguments, falling back to RETRIEVAL_<FIELD> variables, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if given.get(field.name) is not None:
                values[field.name] = given[field.name]
            elif ENV_PREFIX + field.name.upper() in environ:
                values[field.name] = _parse(field, environ[ENV_PREFIX + field.name.upper()])
        if "index_dir" not in values:
            raise UserError("no index: pass --index or set RETRIEVAL_INDEX_DIR")
        return cls(**values)


def _parse(field: dataclasses.Field, raw: str) -> Any:
    """An environment string as the field's type."""
    kind = str(field.type)
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise UserError(f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
