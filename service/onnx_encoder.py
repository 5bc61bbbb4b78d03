"""The service's `Encoder` on ONNX Runtime: towers from `retrieval export --format onnx`, no PyTorch model.

The export folder carries the source checkpoint's fingerprint, so an index built with the checkpoint is
served unchanged (the export check guarantees cosine ≥ 0.9999 to the checkpoint's embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from retrieval.encode import truncated
from retrieval.errors import UserError
from retrieval.export import OnnxModel
from service.settings import Settings


class OnnxEncoder:
    """`service.encoder.Encoder` backed by `image.onnx` / `text.onnx` sessions."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.fingerprint = model.fingerprint
        self.embed_dim = model.embed_dim
        self.context_length = model.context_length

    @classmethod
    def from_settings(cls, settings: Settings) -> OnnxEncoder:
        """Open `settings.onnx_dir`; `torch_threads` (if set) bounds ONNX Runtime's intra-op threads too."""
        if settings.onnx_dir is None:
            raise UserError("runtime onnx needs the export folder (--onnx-dir or RETRIEVAL_ONNX_DIR)")
        return cls(OnnxModel.load(settings.onnx_dir, threads=settings.torch_threads))

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """The checkpoint's open_clip eval transform (from the export's preprocess_cfg)."""
        return self.model.preprocess(image).numpy()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Batch of preprocessed images → normalised embeddings (image.onnx normalises)."""
        return self.model.embed_pixels(pixels)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Batch of texts → normalised embeddings, in one ONNX Runtime call."""
        return self.model.embed_tokens(self.model.tokenizer(list(texts)))

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Same count as the torch runtime (`truncated` needs only `tokenizer` and `context_length`)."""
        return truncated(self.model, texts)
