"""The `Encoder` interface the service encodes through, and its PyTorch implementation.

A runtime (torch now, ONNX from `retrieval export`) provides: identity (`fingerprint`, `embed_dim`,
`context_length`), `preprocess_image` (PIL → (3, H, W) float32, run in request threads),
`encode_pixels` and `encode_texts` (batches → (B, D) L2-normalised float32, run in the single encode
thread), and `truncated` (which texts exceed the context length). Optionally `init_thread()`, called
once in each worker thread before it encodes or preprocesses (intra-op thread settings are per thread).
`make_encoder(settings)` picks the implementation named by `settings.runtime`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

import enn
from retrieval.checkpoint import LoadedModel, load_model
from retrieval.encode import embed_pixels, embed_tokens, truncated
from retrieval.errors import UserError
from service.settings import Settings

log = logging.getLogger(__name__)

# runtime → "module:Class"; each class has a `from_settings(settings)` constructor.
RUNTIMES = {"torch": "service.encoder:TorchEncoder", "onnx": "service.onnx_encoder:OnnxEncoder"}


@runtime_checkable
class Encoder(Protocol):
    """What the service needs from a model runtime."""

    fingerprint: str
    embed_dim: int
    context_length: int

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image → (3, H, W) float32 model input."""
        ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) preprocessed images → (B, D) L2-normalised float32."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """B texts → (B, D) L2-normalised float32 (texts over the context length are truncated)."""
        ...

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts exceed the context length."""
        ...


class TorchEncoder:
    """The checkpoint's towers in PyTorch, ENN weights merged into plain ones for inference speed."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.fingerprint = loaded.fingerprint
        self.embed_dim = loaded.embed_dim
        self.context_length = loaded.context_length
        self.threads = torch.get_num_threads()
        # load_model merged the ENN weights already; a LoadedModel built elsewhere may still be in ENN form.
        enn.merge(loaded.model)
        loaded.model.eval()

    @classmethod
    def from_settings(cls, settings: Settings) -> TorchEncoder:
        """Load `settings.checkpoint` on `settings.device`."""
        if settings.checkpoint is None:
            raise UserError("runtime torch needs a checkpoint (--checkpoint)")
        # Default: all cores but one, which stays with the event loop (HTTP parsing, JSON, FAISS search).
        torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        return cls(load_model(settings.checkpoint, device=settings.device))

    def init_thread(self) -> None:
        """Apply the intra-op thread count in this worker thread (torch keeps it per thread)."""
        torch.set_num_threads(self.threads)

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """open_clip's eval transform."""
        return self.loaded.preprocess(image).numpy()

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Batch of preprocessed images → normalised embeddings."""
        return embed_pixels(self.loaded, torch.from_numpy(np.ascontiguousarray(pixels)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Batch of texts → normalised embeddings."""
        return embed_tokens(self.loaded, self.loaded.tokenizer(list(texts)))

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """The tokenizer's own count against the context length."""
        return truncated(self.loaded, texts)


def make_encoder(settings: Settings) -> Encoder:
    """The encoder for `settings.runtime`."""
    target = RUNTIMES.get(settings.runtime)
    if target is None:
        raise UserError(f"unknown runtime {settings.runtime!r}: use {', '.join(RUNTIMES)}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(f"runtime {settings.runtime!r} is not available in this installation") from None
    return getattr(module, class_name).from_settings(settings)
