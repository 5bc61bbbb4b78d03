"""Training and validation data for a run: DataLoaders from the config's `data` section, resumable mid-epoch.

Reproducibility (what makes `--resume` exact): the sample order of an epoch is a permutation seeded by
(seed, epoch) (`DistributedSampler`, also in a single process), a resumed epoch skips the samples already
trained on inside the sampler (no image is decoded for them), and each sample's augmentation is drawn
from a generator seeded by (seed, epoch, index), so it does not depend on which worker loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from retrieval.data import TrainDataset, load_records
from retrieval.errors import UserError
from retrieval.model import Towers
from retrieval.train.distributed import DistEnv

log = logging.getLogger(__name__)

CACHE_MAX_BYTES = 4 << 30  # data.cache_images refuses a training set whose decoded pixels exceed this


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample index)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (1 << 63)


class SeededSamples(Dataset):
    """Wraps a TrainDataset so that sample `index` of `epoch` is augmented the same way in every run.

    open_clip's train transform draws from torch's global (CPU) RNG; each item seeds that generator with
    `sample_seed` and restores its state afterwards, leaving the caller's RNG untouched. Only the CPU
    generator is touched: `torch.manual_seed` also seeds every accelerator backend, which records a Python
    stack per call and cost ~0.8 ms a sample, more than decoding the image.
    """

    def __init__(self, dataset: TrainDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's captions and augmentations."""
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(sample_seed(self.seed, self.epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (permutation seeded by seed + epoch, this rank's share) that can start mid-epoch.

    With `groups` (lists of dataset indices that belong together, e.g. a scene and its shape-swapped
    twin), the epoch's permutation shuffles whole groups and keeps each group's members next to each other,
    so they land in the same global batch (ranks take interleaved samples, so also across ranks) and each
    becomes the other's hard negative.
    """

    def __init__(self, dataset: Dataset, env: DistEnv, seed: int, groups: list[list[int]] | None = None) -> None:
        super().__init__(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0
        self.groups = groups

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate `epoch`'s order from its `start`-th sample (of this rank's share) on."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if self.groups is None:
            return iter(list(super().__iter__())[self.start :])
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.groups), generator=generator).tolist()
        indices = [index for group in order for index in self.groups[group]][: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas][self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def twin_groups(records: list) -> list[list[int]]:
    """Record indices grouped with their twins (entries whose `twin_of` names another entry's imgid)."""
    by_imgid = {record.meta.get("imgid"): index for index, record in enumerate(records)}
    groups: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        root = by_imgid.get(record.meta.get("twin_of"), index)
        groups.setdefault(root, []).append(index)
    return list(groups.values())


@dataclass
class TrainData:
    """The training stream: `batches(epoch, skip_steps)` yields the micro-batches of each optimizer step.

    Sizes: `batch_size` (global, one optimizer step) = world_size × `rank_batch`; `rank_batch` =
    accum_steps × `micro_batch` (one DataLoader batch). `steps_per_epoch` optimizer steps per epoch; the
    tail of an epoch that does not fill a global batch is dropped (a contrastive batch must be full).
    """

    dataset: SeededSamples
    sampler: ResumableSampler
    loader: DataLoader
    micro_batch: int
    accum_steps: int
    steps_per_epoch: int
    seed: int
    rank: int

    @property
    def rank_batch(self) -> int:
        """Samples this rank consumes per optimizer step."""
        return self.micro_batch * self.accum_steps

    def batches(self, epoch: int, skip_steps: int = 0) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per optimizer step: the list of `accum_steps` (images, tokens) micro-batches, from step `skip_steps`."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_position(epoch, skip_steps * self.rank_batch)
        # Worker seeds come from the loader's generator: fixed per (seed, epoch, rank, start).
        self.loader.generator.manual_seed(sample_seed(self.seed, epoch, self.rank * 1_000_003 + skip_steps))
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        steps = skip_steps
        for micro in self.loader:
            group.append(micro)
            if len(group) == self.accum_steps:
                yield group
                group = []
                steps += 1
                if steps == self.steps_per_epoch:
                    return


def load_train_records(cfg: Mapping[str, Any]) -> list:
    """The training split(s)' records; raises UserError for a missing data file, image root or split."""
    return load_records(cfg["data"], cfg["data"]["train_splits"])


def build_train_data(
    cfg: Mapping[str, Any], towers: Towers, env: DistEnv, records: list | None = None
) -> TrainData:
    """DataLoader for the training split(s) with this rank's share of each global batch.

    `records` (from `load_train_records`) avoids reading the data file twice. Workers: `data.workers`.
    """
    train, data = cfg["training"], cfg["data"]
    batch_size, accum = int(train["batch_size"]), int(train["accum_steps"])
    if batch_size % (env.world_size * accum):
        raise UserError(
            f"training.batch_size={batch_size} must be divisible by world size × accum_steps "
            f"= {env.world_size} × {accum}"
        )
    micro_batch = batch_size // env.world_size // accum
    records = load_train_records(cfg) if records is None else records
    dataset = SeededSamples(
        TrainDataset(
            records,
            towers.preprocess_train if data["augment"] else towers.preprocess_val,
            towers.tokenizer,
            captions=str(data["captions"]),
            seed=int(train["seed"]),
            skip_bad=bool(data["skip_bad"]),
        ),
        seed=int(train["seed"]),
    )
    if data["cache_images"]:
        held = dataset.dataset.preload(CACHE_MAX_BYTES, workers=max(1, int(data["workers"])))
        log.info("decoded-image cache: %d images, %.0f MiB", len(dataset), held / 2**20)
    groups = None
    if data["hard_negatives"] == "twins":
        if data["captions"] != "random":
            raise UserError("data.hard_negatives: twins needs data.captions: random (with `all`, an image's own "
                            "captions would share its batches)")
        groups = twin_groups(records)
        log.info("hard negatives: %d twin pairs kept in the same batches", sum(len(g) > 1 for g in groups))
    sampler = ResumableSampler(dataset, env, seed=int(train["seed"]), groups=groups)
    steps_per_epoch = sampler.num_samples // (micro_batch * accum)
    if steps_per_epoch == 0:
        raise UserError(
            f"training.batch_size={batch_size} is larger than the training set ({len(dataset)} samples)"
        )
    workers = int(data["workers"])
    loader = DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator(),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    log.info(
        "training data: %d samples, %d steps/epoch of %d (%d rank(s) × %d micro-batch × %d accumulation)",
        len(dataset), steps_per_epoch, batch_size, env.world_size, micro_batch, accum,
    )
    return TrainData(dataset, sampler, loader, micro_batch, accum, steps_per_epoch, int(train["seed"]), env.rank)
