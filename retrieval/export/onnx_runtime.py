"""Run an ONNX export (`image.onnx`, `text.onnx`) with ONNX Runtime, with the checkpoint's own
preprocessing and tokenizer, so that serving needs neither the training code's model nor its weights."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from retrieval.errors import UserError
from retrieval.export.source import MANIFEST

IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
IMAGE_INPUT, TEXT_INPUT, OUTPUT = "pixels", "tokens", "embedding"


def _providers() -> list[str]:
    """CUDA when this onnxruntime build has it, else CPU (the `onnxruntime` wheel is CPU only)."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _tokenizer(folder: Path, text_cfg: dict[str, Any]) -> Callable:
    context_length = int(text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(str(folder), context_length=context_length)  # files saved by export
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class OnnxModel:
    """Image and text towers as ONNX Runtime sessions; outputs are L2-normalised float32 rows."""

    def __init__(
        self,
        folder: str | Path,
        model_cfg: dict[str, Any],
        preprocess_cfg: dict[str, Any],
        fingerprint: str,
        threads: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.model_cfg = model_cfg
        self.fingerprint = fingerprint
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = _providers()
        self.image_session = ort.InferenceSession(str(self.folder / IMAGE_FILE), options, providers=providers)
        self.text_session = ort.InferenceSession(str(self.folder / TEXT_FILE), options, providers=providers)
        self.preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
        self.tokenizer = _tokenizer(self.folder, model_cfg["text_cfg"])

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> OnnxModel:
        """Open a folder written by `retrieval export --format onnx` (its manifest says it passed the check)."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise UserError(f"{folder}: no {MANIFEST}; not a (checked) `retrieval export --format onnx` folder")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != "onnx":
            raise UserError(f"{manifest_path}: format is {manifest.get('format')!r}, expected 'onnx'")
        for name in (IMAGE_FILE, TEXT_FILE):
            if not (folder / name).is_file():
                raise UserError(f"{folder}: {name} is missing")
        return cls(folder, manifest["model_cfg"], manifest["preprocess_cfg"], manifest["fingerprint"], threads)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    def embed_pixels(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, 3, H, W) preprocessed images → (B, D)."""
        feed = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
        return self.image_session.run([OUTPUT], {IMAGE_INPUT: feed})[0]

    def embed_tokens(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, L) token ids → (B, D)."""
        feed = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
        return self.text_session.run([OUTPUT], {TEXT_INPUT: feed})[0]

    def encode_images(self, images: Iterable[Image.Image | str | Path], batch_size: int = 32) -> np.ndarray:
        """PIL images or paths → (N, D), `batch_size` per ONNX Runtime call."""
        chunks, batch = [], []
        for item in images:
            if not isinstance(item, Image.Image):
                with Image.open(item) as img:
                    item = img.convert("RGB")
            batch.append(self.preprocess(item))
            if len(batch) == batch_size:
                chunks.append(self.embed_pixels(torch.stack(batch)))
                batch = []
        if batch:
            chunks.append(self.embed_pixels(torch.stack(batch)))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts → (M, D) (texts over the context length are truncated by the tokenizer)."""
        chunks = [self.embed_tokens(self.tokenizer(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)
