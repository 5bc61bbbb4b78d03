"""Batched image and text encoding into L2-normalised float32 arrays (eval, embed, index, service)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from retrieval.checkpoint import LoadedModel
from retrieval.device import autocast


@torch.no_grad()
def embed_pixels(loaded: LoadedModel, pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) preprocessed images → (B, D) normalised float32."""
    with autocast(loaded.device, loaded.precision):
        features = loaded.model.encode_image(pixels.to(loaded.device))
    return F.normalize(features.float(), dim=-1).cpu().numpy()


@torch.no_grad()
def embed_tokens(loaded: LoadedModel, tokens: torch.Tensor) -> np.ndarray:
    """(B, L) token ids → (B, D) normalised float32."""
    with autocast(loaded.device, loaded.precision):
        features = loaded.model.encode_text(tokens.to(loaded.device))
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def _as_image(item: Image.Image | str | Path) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as img:
        return img.convert("RGB")


def encode_images(
    loaded: LoadedModel, images: Iterable[Image.Image | str | Path], batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """PIL images or paths → (N, D) normalised float32, `batch_size` at a time."""
    chunks, batch = [], []
    items = tqdm(images, desc="images", unit="img", disable=not progress)
    for item in items:
        batch.append(loaded.preprocess(_as_image(item)))
        if len(batch) == batch_size:
            chunks.append(embed_pixels(loaded, torch.stack(batch)))
            batch = []
    if batch:
        chunks.append(embed_pixels(loaded, torch.stack(batch)))
    return np.concatenate(chunks) if chunks else np.zeros((0, loaded.embed_dim), np.float32)


def encode_texts(
    loaded: LoadedModel, texts: Sequence[str], batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Captions → (M, D) normalised float32 (texts over the context length are truncated)."""
    starts = tqdm(range(0, len(texts), batch_size), desc="texts", unit="batch", disable=not progress)
    chunks = [embed_tokens(loaded, loaded.tokenizer(list(texts[i : i + batch_size]))) for i in starts]
    return np.concatenate(chunks) if chunks else np.zeros((0, loaded.embed_dim), np.float32)


def truncated(loaded: LoadedModel, texts: Sequence[str]) -> list[bool]:
    """Which texts do not fit the context length (the tokenizer cuts them; the API reports it)."""
    tokenizer = loaded.tokenizer
    limit = loaded.context_length
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None:  # open_clip's HFTokenizer wraps a transformers tokenizer (counts [CLS]/[SEP])
        return [len(hf(text)["input_ids"]) > limit for text in texts]
    # open_clip's SimpleTokenizer adds start and end tokens around the BPE ids.
    return [len(tokenizer.encode(text)) + 2 > limit for text in texts]
