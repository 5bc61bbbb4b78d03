"""Embedding collections: what to encode (`sources`) and the sharded, resumable encoder (`runner`)."""

from retrieval.embed.runner import Embedded, embed_source, plan_shards, read_embeddings
from retrieval.embed.sources import (
    EmbedSource,
    ImageEntry,
    TextEntry,
    from_dataset,
    from_image_folder,
    from_text_file,
)

__all__ = [
    "EmbedSource",
    "Embedded",
    "ImageEntry",
    "TextEntry",
    "embed_source",
    "from_dataset",
    "from_image_folder",
    "from_text_file",
    "plan_shards",
    "read_embeddings",
]
