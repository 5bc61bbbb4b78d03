"""`retrieval data fashion`: plan scenes of real Fashion-MNIST photos and their captions (one seeded RNG
per scene and its twin), then draw and write them with the shared writer (retrieval.data.generated).

Layout and guarantees are those of `retrieval data synth`: OUT/dataset.json + OUT/images/NNNNNN.png
(+ OUT/ceiling.json, the recall a label oracle reaches on val and test: what the captions allow), val = test = min(1000, N // 10) images, byte-identical files per arguments, re-runs are no-ops. Half
of the scene groups come as twins: the same photos with two garments' places exchanged, in the same
split, so that knowing which garments are in a picture is not enough to match its captions.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.data.fashion.captions import describe
from retrieval.data.fashion.ceiling import write_ceiling
from retrieval.data.fashion.scene import Scene, render, sample_scene, swap_places
from retrieval.data.fashion.source import DEFAULT_SOURCE, Pool, load_part, pools
from retrieval.data.generated import Planned, PlannedImage, karpathy_entries, plan_scenes, write_generated

FORMAT_VERSION = 1  # bump when the same seed and source would draw different scenes or captions
TWIN_PROBABILITY = 0.5  # chance that a scene also gets a twin with two garments' places exchanged
DATASET_NAME = "fashion"


def plan(n_images: int, seed: int, split_pools: dict[str, Pool]) -> list[PlannedImage[Scene]]:
    """All scenes and captions, cheap (no pixels); see plan_scenes. `split_pools` comes from `pools`."""

    def sample(rng: random.Random, split: str, room_for_twin: bool) -> tuple[Scene, Scene | None]:
        scene = sample_scene(rng, split_pools[split])
        twin = rng.random() < TWIN_PROBABILITY and room_for_twin
        pair = rng.sample(range(len(scene.garments)), 2)  # drawn either way: one stream, one scene
        return scene, swap_places(scene, *pair) if twin else None

    return plan_scenes(f"{DATASET_NAME}:{FORMAT_VERSION}:{seed}", n_images, sample, describe)


def generate(
    out_dir: str | Path, n_images: int, seed: int = 0, size: int = 64,
    source: str | Path | None = None, workers: int = 2, overwrite: bool = False, progress: bool = True,
) -> Path:
    """Write the dataset to `out_dir` (atomically: built next to it, then renamed) and its ceiling.json (the
    label oracle's recall, `retrieval.data.fashion.ceiling`); returns dataset.json.

    `source` (default DEFAULT_SOURCE) holds the four IDX files. An existing dataset made with the same
    arguments is kept as is, without reading them.
    """
    source = Path(source or DEFAULT_SOURCE).resolve()
    params = {"version": FORMAT_VERSION, "images": n_images, "seed": seed, "size": size, "source": str(source)}
    path = write_generated(out_dir, DATASET_NAME, params, lambda: _planned(n_images, seed, size, source),
                           workers=workers, overwrite=overwrite, progress=progress)
    write_ceiling(path)
    return path


def _planned(n_images: int, seed: int, size: int, source: Path) -> Planned:
    """Read the source, plan every scene, and pair each with its photos."""
    photos = {part: load_part(source, part) for part in ("train", "t10k")}
    images = plan(n_images, seed, pools(photos["train"][1], photos["t10k"][1]))
    entries = karpathy_entries(images, lambda scene: {"garments": [g.to_json() for g in scene.garments]})
    payloads = [(p.scene, tuple(photos[g.source][0][g.index] for g in p.scene.garments), size) for p in images]
    return Planned(entries, _draw, payloads)


def _draw(job: tuple[Scene, tuple[np.ndarray, ...], int]) -> Image.Image:
    """Worker: one scene as an image."""
    scene, garment_photos, size = job
    return render(scene, garment_photos, size)
