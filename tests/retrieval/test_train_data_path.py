"""The training data path: twin scenes share a batch (hard negatives), every sample once per epoch, resumable;
the decoded-image cache and the NHWC layout train like the default path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_testing import train_config

from retrieval.data.records import ImageRecord
from retrieval.errors import UserError
from retrieval.train import RunDir, train_bp
from retrieval.train.data import ResumableSampler, twin_groups
from retrieval.train.distributed import DistEnv


def records_with_twins(n: int, twins: dict[int, int]) -> list[ImageRecord]:
    """n records with imgid = position; `twins` maps a twin's imgid to its original's."""
    return [
        ImageRecord(Path(f"{i}.png"), ["a caption"], "train", f"entry {i}",
                    {"imgid": i, **({"twin_of": twins[i]} if i in twins else {})})
        for i in range(n)
    ]


def env(rank: int = 0, world_size: int = 1) -> DistEnv:
    return DistEnv(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))


def test_twin_groups_pair_each_twin_with_its_original():
    records = records_with_twins(7, {1: 0, 4: 3, 6: 5})
    assert sorted(twin_groups(records)) == [[0, 1], [2], [3, 4], [5, 6]]


def test_twins_are_adjacent_every_sample_once_and_epochs_differ():
    records = records_with_twins(40, {i + 1: i for i in range(0, 40, 4)})  # 10 twin pairs, 20 singles
    groups = twin_groups(records)
    sampler = ResumableSampler(records, env(), seed=5, groups=groups)
    orders = []
    for epoch in range(3):
        sampler.set_position(epoch, 0)
        order = list(sampler)
        assert sorted(order) == list(range(40))
        for original in range(0, 40, 4):
            position = order.index(original)
            assert order[position + 1] == original + 1  # the twin comes right after its original
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    again = ResumableSampler(records, env(), seed=5, groups=groups)
    again.set_position(1, 13)  # resuming mid-epoch continues the same order
    assert list(again) == orders[1][13:]
    assert len(again) == 40 - 13


def test_ranks_interleave_so_twins_stay_in_one_global_batch():
    records = records_with_twins(16, {i + 1: i for i in range(0, 16, 2)})
    groups = twin_groups(records)
    whole = ResumableSampler(records, env(), seed=1, groups=groups)
    whole.set_position(0, 0)
    shares = []
    for rank in range(2):
        part = ResumableSampler(records, env(rank, 2), seed=1, groups=groups)
        part.set_position(0, 0)
        shares.append(list(part))
    assert shares[0] == list(whole)[0::2] and shares[1] == list(whole)[1::2]


def test_hard_negatives_need_random_captions(synth_dataset, tmp_path):
    with pytest.raises(UserError, match="data.hard_negatives: twins needs data.captions: random"):
        train_bp(train_config(synth_dataset, "data.hard_negatives=twins", "data.captions=all"), tmp_path / "run")


def test_training_runs_with_twins_and_the_image_cache(synth_dataset, tmp_path):
    summary = train_bp(train_config(synth_dataset, "data.hard_negatives=twins", "data.cache_images=true",
                                    "data.workers=0", "training.max_steps=3"), tmp_path / "run")
    assert summary["step"] == 3


def test_channels_last_trains_a_conv_tower_to_the_same_losses(synth_dataset, tmp_path):
    """NHWC changes only the memory layout, so a conv tower's losses match the default layout's to float noise."""
    resnet = ["model.vision_cfg={image_size: 32, layers: [1, 1, 1, 1], width: 8, head_width: 16}",
              "training.max_steps=3"]
    losses = {}
    for layout in ("false", "true"):
        train_bp(train_config(synth_dataset, *resnet, f"training.channels_last={layout}"), tmp_path / layout)
        losses[layout] = [r["loss"] for r in RunDir(tmp_path / layout).read_metrics() if r["kind"] == "train"]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


def test_augment_false_trains_on_the_eval_preprocessing(synth_dataset):
    from retrieval.data.images import load_image
    from retrieval.model import build_towers
    from retrieval.train.data import build_train_data

    cfg = train_config(synth_dataset, "data.augment=false")
    towers = build_towers(cfg)
    data = build_train_data(cfg, towers, env())
    record = data.dataset.dataset.records[0]
    for epoch in (0, 1):  # the same pixels every epoch: no random crop
        data.dataset.set_epoch(epoch)
        assert torch.equal(data.dataset[0][0], towers.preprocess_val(load_image(record.path)))


def test_val_every_epochs_validates_every_nth_epoch_and_after_the_last_step(synth_dataset, tmp_path):
    # 6 steps per epoch, 3 epochs, validation every 2nd epoch: after epoch 2 and (the last) epoch 3
    train_bp(train_config(synth_dataset, "training.epochs=3", "training.val_every_epochs=2"), tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "val"] == [12, 18]
    assert torch.load(run.last, map_location="cpu", weights_only=False)["step"] == 18
