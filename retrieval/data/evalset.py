"""Evaluation sets (unique images, all captions, caption → image map) and batched image loading."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.data.images import find_unreadable, load_image
from retrieval.data.problems import Problems
from retrieval.data.records import ImageRecord


@dataclass(frozen=True)
class EvalSet:
    """`images[i]` unique paths in file order; `captions[j]` belongs to image `text_to_image[j]`."""

    images: list[Path]
    captions: list[str]
    text_to_image: np.ndarray  # (n_captions,) int64
    sources: list[str]  # per image: file + entry/line, for error messages
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.images) or len(self.text_to_image) != len(self.captions):
            raise ValueError("EvalSet: images/sources or captions/text_to_image lengths differ")
        counts = np.bincount(self.text_to_image, minlength=len(self.images))
        if len(counts) != len(self.images) or (counts == 0).any():
            raise ValueError("EvalSet: every image needs at least one caption and every caption an image")

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord], name: str = "") -> EvalSet:
        """Flatten records; records naming the same file are merged into one image."""
        index: dict[Path, int] = {}
        images, sources, captions, owner = [], [], [], []
        for record in records:
            i = index.setdefault(record.path, len(images))
            if i == len(images):
                images.append(record.path)
                sources.append(record.source)
            captions += record.captions
            owner += [i] * len(record.captions)
        return cls(images, captions, np.asarray(owner, dtype=np.int64), sources, name)

    @property
    def n_images(self) -> int:
        """Number of (unique) images."""
        return len(self.images)

    @property
    def n_captions(self) -> int:
        """Number of captions (queries for text→image)."""
        return len(self.captions)

    def subset(self, image_indices: Sequence[int] | np.ndarray, name: str | None = None) -> EvalSet:
        """The images `image_indices` (in that order) with their captions, re-indexed from 0."""
        keep = np.asarray(image_indices, dtype=np.int64)
        new_index = np.full(self.n_images, -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        mapped = new_index[self.text_to_image]
        rows = np.flatnonzero(mapped >= 0)
        return EvalSet(
            images=[self.images[i] for i in keep],
            captions=[self.captions[j] for j in rows],
            text_to_image=mapped[rows],
            sources=[self.sources[i] for i in keep],
            name=self.name if name is None else name,
        )

    def folds(self, n: int = 5) -> list[EvalSet]:
        """`n` folds of consecutive images (COCO-1K: the 5,000 test images → 5 × 1,000, in file order)."""
        return [self.subset(part, f"{self.name} fold {k + 1}/{n}") for k, part in enumerate(fold_indices(self.n_images, n))]

    def drop_unreadable(self, problems: Problems, workers: int = 2) -> EvalSet:
        """Decode every image now and drop (skip_bad) or report the unreadable ones with their captions."""
        bad = find_unreadable(self.images, workers)
        for path in self.images:
            if path in bad:
                problems.report("unreadable", bad[path])
        return self.subset([i for i, path in enumerate(self.images) if path not in bad]) if bad else self


def fold_indices(n_items: int, n_folds: int) -> list[np.ndarray]:
    """Consecutive, near-equal folds of `range(n_items)` (sizes differ by at most one)."""
    if not 1 <= n_folds <= n_items:
        raise ValueError(f"cannot split {n_items} images into {n_folds} folds")
    return np.array_split(np.arange(n_items), n_folds)


class ImageDataset(Dataset):
    """Preprocessed images in order (for encoding an EvalSet or a folder); errors name the file."""

    def __init__(
        self, paths: Sequence[Path], preprocess: Callable[[Any], torch.Tensor], sources: Sequence[str] | None = None
    ) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.sources = list(sources) if sources is not None else [""] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(load_image(self.paths[index], self.sources[index]))


def image_loader(
    paths: Sequence[Path],
    preprocess: Callable[[Any], torch.Tensor],
    batch_size: int,
    workers: int = 0,
    sources: Sequence[str] | None = None,
) -> DataLoader:
    """Batches (B, C, H, W) of preprocessed images in order, decoded in `workers` processes."""
    return DataLoader(
        ImageDataset(paths, preprocess, sources),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
    )
