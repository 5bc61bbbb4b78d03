"""`retrieval data synth`: plan scenes and captions (one seeded RNG per scene), then draw and write them
with the shared generated-dataset writer (retrieval.data.generated): same arguments → byte-identical
files, whatever the number of workers.

Layout: OUT/dataset.json + OUT/images/NNNNNN.png. Splits: val and test get min(1000, N // 10) images
each, train the rest (N = 20,000 → 18,000 / 1,000 / 1,000). About a quarter of the scenes come with a
"twin": the same picture with the shapes of two objects swapped, in the same split, so that a model
that only counts colours and shapes cannot tell the pair apart.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from retrieval.data.generated import Planned, PlannedImage, karpathy_entries, plan_scenes, write_generated
from retrieval.data.synth.captions import describe
from retrieval.data.synth.render import render
from retrieval.data.synth.scene import Scene, sample_scene, swap_shapes, swappable_pair

FORMAT_VERSION = 1  # bump when the same seed would draw different scenes or captions
TWIN_PROBABILITY = 0.3  # chance that a scene with a swappable pair also gets its shape-swapped twin
DATASET_NAME = "synth"


def plan(n_images: int, seed: int) -> list[PlannedImage[Scene]]:
    """All scenes and captions, cheap (no pixels); see plan_scenes."""
    return plan_scenes(f"{DATASET_NAME}:{FORMAT_VERSION}:{seed}", n_images, _sample, describe)


def _sample(rng: random.Random, split: str, room_for_twin: bool) -> tuple[Scene, Scene | None]:
    """A scene and, sometimes, its shape-swapped twin."""
    scene = sample_scene(rng)
    pair = swappable_pair(scene, rng) if rng.random() < TWIN_PROBABILITY and room_for_twin else None
    return scene, None if pair is None else swap_shapes(scene, *pair)


def generate(
    out_dir: str | Path, n_images: int = 20000, seed: int = 0, size: int = 64, workers: int = 2,
    overwrite: bool = False, progress: bool = True,
) -> Path:
    """Write the dataset to `out_dir` (atomically: built next to it, then renamed); returns dataset.json.

    An existing dataset made with the same arguments is kept as is (so the demo can call this every time).
    """
    params = {"version": FORMAT_VERSION, "images": n_images, "seed": seed, "size": size}
    return write_generated(out_dir, DATASET_NAME, params, lambda: _planned(n_images, seed, size),
                           workers=workers, overwrite=overwrite, progress=progress)


def _planned(n_images: int, seed: int, size: int) -> Planned:
    """The Karpathy entries with each scene's `objects`, and what draws each image."""
    images = plan(n_images, seed)
    entries = karpathy_entries(images, lambda scene: {"objects": [o.to_json() for o in scene.objects]})
    return Planned(entries, _draw, [(p.scene, size) for p in images])


def _draw(job: tuple[Scene, int]) -> Image.Image:
    """Worker: one scene as an image."""
    scene, size = job
    return render(scene, size)
