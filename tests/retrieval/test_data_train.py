"""TrainDataset: caption choice reproducible per (seed, epoch, index), "all" pairs, bad images named/skipped."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrieval.data import BadImageError, TrainDataset, load_records
from retrieval.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.tokenizer.SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def preprocess():
    return open_clip.image_transform(16, is_train=False)


def caption_index(record, tokens, tokenizer) -> int:
    """Which of the record's captions these token ids encode."""
    options = tokenizer(record.captions)
    (match,) = [k for k in range(len(record.captions)) if torch.equal(options[k], tokens)]
    return match


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def noisy_png(path) -> None:
    """A PNG big enough that cutting it in half leaves a readable header but missing pixels."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)


def test_random_captions_depend_only_on_seed_epoch_index(make_karpathy, preprocess, tokenizer):
    records = load_records(make_karpathy({"train": 6}, captions=5).cfg(), "train")
    first = TrainDataset(records, preprocess, tokenizer, captions="random", seed=1)
    second = TrainDataset(records, preprocess, tokenizer, captions="random", seed=1)
    assert len(first) == 6
    image, tokens = first[0]
    assert image.shape == (3, 16, 16) and tokens.shape == (16,) and tokens.dtype == torch.long

    def choices(ds, epoch):
        ds.set_epoch(epoch)
        return [caption_index(records[i], ds[i][1], tokenizer) for i in range(len(ds))]

    per_epoch = [choices(first, e) for e in range(6)]
    assert choices(second, 4) == per_epoch[4]  # a resumed run at epoch 4 sees the same captions
    assert len({tuple(c) for c in per_epoch}) > 1  # but epochs differ
    assert {c for epoch in per_epoch for c in epoch} == set(range(5))  # and every caption gets used
    other_seed = TrainDataset(records, preprocess, tokenizer, captions="random", seed=2)
    assert [choices(other_seed, e) for e in range(6)] != per_epoch


def test_all_mode_yields_every_pair_once(make_karpathy, preprocess, tokenizer):
    records = load_records(make_karpathy({"train": 3}, captions=4).cfg(), "train")
    ds = TrainDataset(records, preprocess, tokenizer, captions="all")
    assert len(ds) == 12
    seen = set()
    for k in range(len(ds)):
        image, tokens = ds[k]
        owner = k // 4  # pairs are laid out image by image
        assert torch.equal(image, preprocess(Image.open(records[owner].path).convert("RGB")))
        seen.add((owner, caption_index(records[owner], tokens, tokenizer)))
    assert seen == {(i, c) for i in range(3) for c in range(4)}


def test_truncated_image_is_named_or_skipped(make_karpathy, preprocess, tokenizer):
    ds_files = make_karpathy({"train": 3})
    bad = ds_files.images / "img001.png"
    noisy_png(bad)
    records = load_records(ds_files.cfg(), "train")  # existence is checked up front, decoding later
    truncate(bad)
    strict = TrainDataset(records, preprocess, tokenizer)
    with pytest.raises(BadImageError, match=r"cannot read image .*img001\.png \(.*images\[1\].*\): image file is truncated"):
        strict[1]
    lenient = TrainDataset(records, preprocess, tokenizer, skip_bad=True)
    image, _ = lenient[1]  # replaced by the next readable image, deterministically
    assert torch.equal(image, strict[2][0])


def test_worker_errors_stay_one_line(make_karpathy, preprocess, tokenizer):
    ds_files = make_karpathy({"train": 2})
    noisy_png(ds_files.images / "img000.png")
    records = load_records(ds_files.cfg(), "train")
    truncate(ds_files.images / "img000.png")
    loader = DataLoader(TrainDataset(records, preprocess, tokenizer), batch_size=2, num_workers=1)
    with pytest.raises(BadImageError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("cannot read image") and "img000.png" in message


def test_preloaded_cache_gives_the_same_samples_without_reading_files(make_karpathy, tokenizer):
    ds_files = make_karpathy({"train": 4}, captions=3)
    records = load_records(ds_files.cfg(), "train")
    augment = open_clip.image_transform(16, is_train=True)  # random crops: the draws must match too

    def samples(ds):
        out = []
        for index in range(len(ds)):
            torch.manual_seed(10 + index)
            out.append(ds[index])
        return out

    expected = samples(TrainDataset(records, augment, tokenizer, seed=3))
    cached = TrainDataset(records, augment, tokenizer, seed=3)
    held = cached.preload(max_bytes=1 << 20)
    assert held == sum(np.asarray(Image.open(r.path).convert("RGB")).size for r in records)
    for path in ds_files.images.iterdir():
        path.unlink()  # after the preload no epoch touches the files
    for (image, tokens), (want_image, want_tokens) in zip(samples(cached), expected, strict=True):
        assert torch.equal(image, want_image) and torch.equal(tokens, want_tokens)


def test_preload_refuses_a_set_over_its_budget_and_skips_bad_images(make_karpathy, preprocess, tokenizer):
    ds_files = make_karpathy({"train": 3})
    records = load_records(ds_files.cfg(), "train")
    with pytest.raises(UserError, match=r"data.cache_images: the 3 decoded training images would take .* set data.cache_images: false"):
        TrainDataset(records, preprocess, tokenizer).preload(max_bytes=100)
    noisy_png(ds_files.images / "img001.png")
    truncate(ds_files.images / "img001.png")
    with pytest.raises(BadImageError, match=r"img001\.png"):
        TrainDataset(records, preprocess, tokenizer).preload(max_bytes=1 << 24)
    lenient = TrainDataset(records, preprocess, tokenizer, skip_bad=True)
    lenient.preload(max_bytes=1 << 24)
    assert torch.equal(lenient[1][0], lenient[2][0])  # the unreadable image is replaced by the next one
