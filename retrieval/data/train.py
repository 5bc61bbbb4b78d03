"""The training Dataset: (preprocessed image, token ids) pairs drawn from `ImageRecord`s."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from retrieval.data.images import BadImageError, load_image
from retrieval.data.records import ImageRecord
from retrieval.errors import UserError

logger = logging.getLogger(__name__)

CAPTION_MODES = ("random", "all")


class TrainDataset(Dataset):
    """Image–caption samples; preprocessing and tokenizer come from the model factory (open_clip / HF).

    `captions="random"`: one sample per image, its caption drawn from (seed, epoch, index) only, so a
    resumed run (after `set_epoch`) sees exactly the captions the interrupted one would have.
    `captions="all"`: one sample per (image, caption) pair.
    An image that fails to decode raises `BadImageError` naming the file, or with `skip_bad` is replaced
    by the next readable image (deterministically) and logged once.
    `preload()` decodes every image once and keeps the RGB pixels in memory (the decoded-image cache), so
    an epoch costs no decoding: for small images that is most of the loading time.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        preprocess: Callable[[Any], torch.Tensor],
        tokenize: Callable[[list[str]], torch.Tensor],
        captions: str = "random",
        seed: int = 0,
        skip_bad: bool = False,
    ) -> None:
        if captions not in CAPTION_MODES:
            raise UserError(f"data.captions must be one of {', '.join(CAPTION_MODES)}, got {captions!r}")
        if not records:
            raise UserError("no training images")
        self.records = list(records)
        self.preprocess = preprocess
        self.tokenize = tokenize
        self.mode = captions
        self.seed = seed
        self.skip_bad = skip_bad
        self.epoch = 0
        self._bad: set[int] = set()  # per worker process: images already found unreadable
        self._decoded: list[Image.Image | None] = []  # preload(): every image, decoded (None = unreadable)
        # "all": sample k → (image, caption); flat lists keep this cheap to pickle into workers.
        self._pairs = (
            [(i, c) for i, r in enumerate(self.records) for c in range(len(r.captions))] if captions == "all" else []
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the captions of `epoch` (call before each epoch, like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._pairs) if self.mode == "all" else len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_index, caption_index = self._pairs[index] if self.mode == "all" else (index, None)
        image_index, image = self._load(image_index)
        captions = self.records[image_index].captions
        if caption_index is None or caption_index >= len(captions):
            caption_index = random.Random(f"{self.seed}:{self.epoch}:{index}").randrange(len(captions))
        tokens = self.tokenize([captions[caption_index]])[0]  # (context_length,)
        return self.preprocess(image), tokens

    def preload(self, max_bytes: int, workers: int = 2) -> int:
        """Decode every image into memory (threads: PIL releases the GIL); returns the bytes held.

        Raises UserError, before decoding everything, when the first images say the whole set would not
        fit in `max_bytes`; an unreadable image raises as in training unless `skip_bad`.
        """
        head = [self._decode(i) for i in range(min(16, len(self.records)))]
        readable = [img for img in head if img is not None]
        estimate = len(self.records) * _pixel_bytes(readable) // max(1, len(readable))
        if estimate > max_bytes:
            raise UserError(
                f"data.cache_images: the {len(self.records)} decoded training images would take about "
                f"{estimate / 2**30:.1f} GiB, over the cache's {max_bytes / 2**30:.1f} GiB; set data.cache_images: false"
            )
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            self._decoded = head + list(pool.map(self._decode, range(len(head), len(self.records))))
        self._bad = {i for i, img in enumerate(self._decoded) if img is None}
        return _pixel_bytes(img for img in self._decoded if img is not None)

    def _decode(self, index: int) -> Image.Image | None:
        """Decode image `index`; an unreadable one raises, or with `skip_bad` is logged and gives None."""
        record = self.records[index]
        try:
            return load_image(record.path, record.source)
        except BadImageError as err:
            if not self.skip_bad:
                raise
            logger.warning("skipping unreadable training image: %s", err)
            return None

    def _load(self, image_index: int) -> tuple[int, Any]:
        """Image `image_index` (from the cache, or decoded), or (skip_bad) the next readable one after it."""
        for step in range(len(self.records)):
            current = (image_index + step) % len(self.records)
            if current in self._bad:
                continue
            image = self._decoded[current] if self._decoded else self._decode(current)
            if image is not None:
                return current, image
            self._bad.add(current)
        raise UserError("no readable training image left (every image failed to decode)")


def _pixel_bytes(images: Iterable[Image.Image]) -> int:
    """Bytes the decoded RGB pixels of `images` take."""
    return sum(img.width * img.height * 3 for img in images)
