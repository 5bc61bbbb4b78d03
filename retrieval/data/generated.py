"""Writing a generated dataset (`retrieval data synth`, `retrieval data fashion`) in the Karpathy format.

Every generator gets the same guarantees from here: OUT/dataset.json + OUT/images/NNNNNN.png; the same
arguments give byte-identical files whatever the number of worker processes; re-running with the same
arguments is a no-op (so the demo can call it every time); a folder holding the same generator's dataset
made with other arguments is replaced only with --overwrite, and a folder holding anything else is never
touched; the folder is built next to its final place and renamed in, so an interrupted run leaves no
half-written dataset behind.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image
from tqdm import tqdm

from retrieval.data.wording import tokens
from retrieval.errors import UserError

logger = logging.getLogger(__name__)
SceneT = TypeVar("SceneT")
CEILING_FILE = "ceiling.json"  # the recall a perfect caption reader reaches, written beside some datasets


@dataclass(frozen=True)
class PlannedImage(Generic[SceneT]):
    """One image of a dataset before drawing: its scene (whatever the generator draws) and captions."""

    imgid: int
    split: str
    scene: SceneT
    captions: list[str]
    twin_of: int | None  # imgid of the original when this image is its twin


@dataclass(frozen=True)
class Planned:
    """A dataset ready to draw: its Karpathy image entries and what draws each image.

    `draw` must be a module-level function (worker processes receive it by reference);
    `draw(payloads[i])` is image i, saved as `entries[i]["filename"]`.
    """

    entries: list[dict]
    draw: Callable[[Any], Image.Image]
    payloads: list[Any]


def split_sizes(n_images: int) -> dict[str, int]:
    """Images per split: val = test = min(1000, N // 10), train = the rest."""
    held_out = min(1000, n_images // 10)
    return {"train": n_images - 2 * held_out, "val": held_out, "test": held_out}


def image_filename(imgid: int) -> str:
    """The PNG of image `imgid` under OUT/images/."""
    return f"{imgid:06d}.png"


def plan_scenes(
    stream: str, n_images: int, sample: Callable[[random.Random, str, bool], tuple[SceneT, SceneT | None]],
    describe: Callable[[SceneT, random.Random], list[str]],
) -> list[PlannedImage[SceneT]]:
    """All scenes and captions, cheap (no pixels), one seeded RNG per group of a scene and its twin.

    `sample(rng, split, room_for_twin)` draws a scene and, maybe, its twin (None when not, and always
    None without room). Twins share a caption seed: parallel captions, so they differ only where the
    scenes do. Each split draws from its own stream (`stream:split:group`), so the val/test sets do not
    change when only the training size does (for N ≥ 10,000).
    """
    planned: list[PlannedImage[SceneT]] = []
    for split, count in split_sizes(n_images).items():
        group, made = 0, 0
        while made < count:
            rng = random.Random(f"{stream}:{split}:{group}")
            scene, twin = sample(rng, split, count - made >= 2)
            caption_seed = rng.getrandbits(64)
            first = len(planned)
            planned.append(PlannedImage(first, split, scene, describe(scene, random.Random(caption_seed)), None))
            if twin is not None:
                planned.append(PlannedImage(first + 1, split, twin, describe(twin, random.Random(caption_seed)), first))
            made += 1 if twin is None else 2
            group += 1
    return planned


def karpathy_entries(planned: list[PlannedImage[SceneT]], facts: Callable[[SceneT], dict]) -> list[dict]:
    """Karpathy image entries, each with its scene's `facts` (JSON fields) and `twin_of` for inspection."""
    entries, sentid = [], 0
    for p in planned:
        sentences = []
        for caption in p.captions:
            sentences.append({"raw": caption, "tokens": tokens(caption), "imgid": p.imgid, "sentid": sentid})
            sentid += 1
        entry = {
            "filename": image_filename(p.imgid),
            "imgid": p.imgid,
            "split": p.split,
            "sentids": [s["sentid"] for s in sentences],
            "sentences": sentences,
            **facts(p.scene),
        }
        if p.twin_of is not None:
            entry["twin_of"] = p.twin_of
        entries.append(entry)
    return entries


def write_generated(
    out_dir: str | Path, name: str, params: dict, plan: Callable[[], Planned], *, workers: int = 2,
    overwrite: bool = False, progress: bool = True,
) -> Path:
    """Write dataset `name` to `out_dir` unless it already holds it; returns dataset.json.

    `params` (with "images" and "size") identify the dataset and are stored at the top of dataset.json
    under the key `name`; `plan()` is called only when there is something to write.
    """
    n_images, size = params["images"], params["size"]
    if n_images < 10:
        raise UserError(f"--images must be at least 10 (one each for val and test), got {n_images}")
    if not 16 <= size <= 512:
        raise UserError(f"--size must be between 16 and 512 pixels, got {size}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    if _existing_params(out_dir, name) == params and _complete(out_dir, n_images):
        logger.info("%s already holds this dataset (%s); nothing to do", out_dir, params)
        return out_dir / "dataset.json"
    _check_replaceable(out_dir, name, overwrite)

    planned = plan()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    jobs = [(planned.draw, str(tmp / "images" / e["filename"]), p) for e, p in zip(planned.entries, planned.payloads, strict=True)]
    bar = tqdm(total=len(jobs), desc=f"{name} images", unit="img", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_save, jobs, chunksize=256):
                bar.update()
    else:
        for job in jobs:
            _save(job)
            bar.update()
    bar.close()
    data = {"dataset": name, name: params, "images": planned.entries}
    (tmp / "dataset.json").write_text(json.dumps(data) + "\n")

    if out_dir.exists():
        shutil.rmtree(out_dir)  # only reached for a previous dataset of this generator (checked above)
    tmp.rename(out_dir)
    counts = Counter(e["split"] for e in planned.entries)
    logger.info("wrote %s: %d images (%s)", out_dir, n_images, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out_dir / "dataset.json"


def _save(job: tuple[Callable[[Any], Image.Image], str, Any]) -> None:
    """Worker: draw one image and save it as PNG (fixed settings, so bytes are reproducible)."""
    draw, path, payload = job
    draw(payload).save(path, format="PNG", compress_level=6)


def _existing_params(out_dir: Path, name: str) -> dict | None:
    """The generation parameters recorded in an existing dataset.json of generator `name`, else None."""
    try:
        data = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get(name) if isinstance(data, dict) and data.get("dataset") == name else None


def _complete(out_dir: Path, n_images: int) -> bool:
    """Every image file of a recorded dataset is there."""
    return all((out_dir / "images" / image_filename(i)).is_file() for i in range(n_images))


def _check_replaceable(out_dir: Path, name: str, overwrite: bool) -> None:
    """Refuse to touch a folder that holds anything but a `name` dataset, or one without --overwrite."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        out_dir.rmdir()
        return
    if _existing_params(out_dir, name) is None or not entries <= {"dataset.json", "images", CEILING_FILE}:
        raise UserError(f"--out {out_dir} is not empty and is not a {name} dataset; choose another folder")
    if not overwrite:
        raise UserError(f"--out {out_dir} holds a {name} dataset made with other arguments; add --overwrite to replace it")
