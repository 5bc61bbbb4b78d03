"""EvalSet: flattening, caption → image map, COCO-1K folds, unreadable images, batched loading."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest

from retrieval.data import EvalSet, Problems, fold_indices, image_loader, load_records
from retrieval.data.records import ImageRecord
from retrieval.errors import UserError


def test_from_records_maps_every_caption_to_its_image(make_karpathy):
    ds = make_karpathy({"test": 4}, captions=2)
    eval_set = EvalSet.from_records(load_records(ds.cfg(), "test"), name="test")
    assert eval_set.n_images == 4 and eval_set.n_captions == 8
    assert eval_set.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert eval_set.captions[5] == "picture 2 caption 1" and eval_set.images[2].name == "img002.png"


def test_duplicate_paths_merge_into_one_image(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    records = [ImageRecord(a, ["x"], "test", "f:1"), ImageRecord(b, ["y"], "test", "f:2"),
               ImageRecord(a, ["z"], "test", "f:3")]
    eval_set = EvalSet.from_records(records)
    assert eval_set.images == [a, b] and eval_set.text_to_image.tolist() == [0, 1, 0]


def test_folds_are_consecutive_and_reindexed(make_karpathy):
    ds = make_karpathy({"test": 10}, captions=3)
    eval_set = EvalSet.from_records(load_records(ds.cfg(), "test"))
    folds = eval_set.folds(5)
    assert [f.n_images for f in folds] == [2] * 5 and [f.n_captions for f in folds] == [6] * 5
    third = folds[2]
    assert [p.name for p in third.images] == ["img004.png", "img005.png"]
    assert third.text_to_image.tolist() == [0, 0, 0, 1, 1, 1]
    assert third.captions[3] == "picture 5 caption 0"
    assert [len(f) for f in fold_indices(5000, 5)] == [1000] * 5  # COCO-1K
    with pytest.raises(ValueError):
        fold_indices(3, 5)


def test_drop_unreadable_removes_image_and_its_captions(make_karpathy):
    ds = make_karpathy({"test": 3}, captions=2)
    (ds.images / "img001.png").write_bytes(b"garbage")
    eval_set = EvalSet.from_records(load_records(ds.cfg(), "test"))
    with pytest.raises(UserError, match=r"img001\.png.*cannot identify image file"):
        eval_set.drop_unreadable(Problems(skip=False))
    problems = Problems(skip=True)
    kept = eval_set.drop_unreadable(problems)
    assert [p.name for p in kept.images] == ["img000.png", "img002.png"]
    assert kept.captions == ["picture 0 caption 0", "picture 0 caption 1", "picture 2 caption 0", "picture 2 caption 1"]
    assert problems.counts["unreadable"] == 1


def test_image_loader_batches_in_order(make_karpathy):
    ds = make_karpathy({"test": 5})
    eval_set = EvalSet.from_records(load_records(ds.cfg(), "test"))
    preprocess = open_clip.image_transform(16, is_train=False)
    batches = list(image_loader(eval_set.images, preprocess, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    from PIL import Image

    expected = preprocess(Image.open(eval_set.images[3]).convert("RGB"))
    np.testing.assert_array_equal(batches[1][1].numpy(), expected.numpy())
