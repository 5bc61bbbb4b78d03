"""`retrieval data synth`: plan scenes and captions (one seeded RNG per scene), render PNGs in parallel,
write the Karpathy split JSON. Same arguments → byte-identical files, whatever the number of workers.

Layout: OUT/dataset.json + OUT/images/NNNNNN.png. Splits: val and test get min(1000, N // 10) images
each, train the rest (N = 20,000 → 18,000 / 1,000 / 1,000). About a quarter of the scenes come with a
"twin": the same picture with the shapes of two objects swapped, in the same split, so that a model
that only counts colours and shapes cannot tell the pair apart.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.data.synth.captions import describe, tokens
from retrieval.data.synth.render import render
from retrieval.data.synth.scene import Scene, sample_scene, swap_shapes, swappable_pair
from retrieval.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the same seed would draw different scenes or captions
TWIN_PROBABILITY = 0.3  # chance that a scene with a swappable pair also gets its shape-swapped twin
DATASET_NAME = "synth"


@dataclass(frozen=True)
class PlannedImage:
    """One image of the dataset before rendering."""

    imgid: int
    split: str
    scene: Scene
    captions: list[str]
    twin_of: int | None  # imgid of the original when this image is a shape-swapped twin

    @property
    def filename(self) -> str:
        return f"{self.imgid:06d}.png"


def split_sizes(n_images: int) -> dict[str, int]:
    """Images per split: val = test = min(1000, N // 10), train = the rest."""
    held_out = min(1000, n_images // 10)
    return {"train": n_images - 2 * held_out, "val": held_out, "test": held_out}


def plan(n_images: int, seed: int) -> list[PlannedImage]:
    """All scenes and captions, cheap (no pixels). Each split draws from its own seeded stream, so the
    val/test sets of a seed do not change when only the training size does (for N ≥ 10,000)."""
    planned: list[PlannedImage] = []
    for split, count in split_sizes(n_images).items():
        group, made = 0, 0
        while made < count:
            rng = random.Random(f"{DATASET_NAME}:{FORMAT_VERSION}:{seed}:{split}:{group}")
            scene = sample_scene(rng)
            pair = swappable_pair(scene, rng) if rng.random() < TWIN_PROBABILITY and count - made >= 2 else None
            caption_seed = rng.getrandbits(64)  # twins share it: parallel captions, different bindings
            first = len(planned)
            planned.append(PlannedImage(first, split, scene, describe(scene, random.Random(caption_seed)), None))
            if pair is not None:
                twin = swap_shapes(scene, *pair)
                planned.append(PlannedImage(first + 1, split, twin, describe(twin, random.Random(caption_seed)), first))
            made += 2 if pair is not None else 1
            group += 1
    return planned


def generate(
    out_dir: str | Path, n_images: int = 20000, seed: int = 0, size: int = 64, workers: int = 2,
    overwrite: bool = False, progress: bool = True,
) -> Path:
    """Write the dataset to `out_dir` (atomically: built next to it, then renamed); returns dataset.json.

    An existing dataset made with the same arguments is kept as is (so the demo can call this every time).
    """
    if n_images < 10:
        raise UserError(f"--images must be at least 10 (one each for val and test), got {n_images}")
    if not 16 <= size <= 512:
        raise UserError(f"--size must be between 16 and 512 pixels, got {size}")
    out_dir = Path(out_dir)
    params = {"version": FORMAT_VERSION, "images": n_images, "seed": seed, "size": size}
    if _existing_params(out_dir) == params and _complete(out_dir, n_images):
        logger.info("%s already holds this dataset (%s); nothing to do", out_dir, params)
        return out_dir / "dataset.json"
    _check_replaceable(out_dir, overwrite)

    planned = plan(n_images, seed)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    jobs = [(str(tmp / "images" / p.filename), p.scene, size) for p in planned]
    bar = tqdm(total=len(jobs), desc="synth images", unit="img", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_draw, jobs, chunksize=256):
                bar.update()
    else:
        for job in jobs:
            _draw(job)
            bar.update()
    bar.close()
    (tmp / "dataset.json").write_text(json.dumps(_karpathy_json(planned, params)) + "\n")

    if out_dir.exists():
        shutil.rmtree(out_dir)  # only reached for a previous synth dataset (checked above)
    tmp.rename(out_dir)
    counts = split_sizes(n_images)
    logger.info("wrote %s: %d images (%s)", out_dir, n_images, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out_dir / "dataset.json"


def _draw(job: tuple[str, Scene, int]) -> None:
    """Worker: render one scene and save it as PNG (fixed settings, so bytes are reproducible)."""
    path, scene, size = job
    render(scene, size).save(path, format="PNG", compress_level=6)


def _karpathy_json(planned: list[PlannedImage], params: dict) -> dict:
    """The Karpathy split structure, plus the scene facts (`objects`) and `twin_of` for inspection."""
    images, sentid = [], 0
    for p in planned:
        sentences = []
        for caption in p.captions:
            sentences.append({"raw": caption, "tokens": tokens(caption), "imgid": p.imgid, "sentid": sentid})
            sentid += 1
        entry = {
            "filename": p.filename,
            "imgid": p.imgid,
            "split": p.split,
            "sentids": [s["sentid"] for s in sentences],
            "sentences": sentences,
            "objects": [o.to_json() for o in p.scene.objects],
        }
        if p.twin_of is not None:
            entry["twin_of"] = p.twin_of
        images.append(entry)
    return {"dataset": DATASET_NAME, DATASET_NAME: params, "images": images}


def _existing_params(out_dir: Path) -> dict | None:
    """The generation parameters recorded in an existing synth dataset.json, else None."""
    try:
        data = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get(DATASET_NAME) if isinstance(data, dict) and data.get("dataset") == DATASET_NAME else None


def _complete(out_dir: Path, n_images: int) -> bool:
    """Every image file of a recorded dataset is there."""
    return all((out_dir / "images" / f"{i:06d}.png").is_file() for i in range(n_images))


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """Refuse to touch a folder that holds anything but a synth dataset, or one without --overwrite."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        out_dir.rmdir()
        return
    if _existing_params(out_dir) is None or not entries <= {"dataset.json", "images"}:
        raise UserError(f"--out {out_dir} is not empty and is not a synth dataset; choose another folder")
    if not overwrite:
        raise UserError(f"--out {out_dir} holds a synth dataset made with other arguments; add --overwrite to replace it")
