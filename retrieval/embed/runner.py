"""Sharded, resumable embedding of a collection into normalised float32 arrays (single process or torchrun).

OUT holds `embed.json` (state: model fingerprint, item-list digest, shard size, completeness),
`images.jsonl` / `texts.jsonl` (one entry per row), and finally `image.npy` / `text.npy`. While running,
each block of `shard_size` items goes to `shards/{modality}-{n:05d}.npy`, written atomically, so a
re-run skips finished shards. Under torchrun, rank r takes every world-th shard; rank 0 merges.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.checkpoint import LoadedModel
from retrieval.data.evalset import image_loader
from retrieval.embed.sources import EmbedSource, ImageEntry, TextEntry, read_lists
from retrieval.encode import embed_pixels, embed_tokens
from retrieval.errors import UserError
from retrieval.index.io import atomic_write_bytes, atomic_write_json, fsync_dir
from retrieval.store import utc_now

log = logging.getLogger(__name__)

STATE = "embed.json"
SHARDS = "shards"
ARRAYS = {"image": "image.npy", "text": "text.npy"}


@dataclass
class Embedded:
    """A finished `retrieval embed` folder: entries and their (memory-mapped) embeddings, row for row."""

    folder: Path
    fingerprint: str
    dim: int
    images: list[ImageEntry]
    texts: list[TextEntry]
    image_vectors: np.ndarray  # (N, D) float32, L2-normalised
    text_vectors: np.ndarray  # (M, D)


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one modality."""

    modality: str
    number: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.modality}-{self.number:05d}.npy"


def distributed_context() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) — torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, lambda: None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # gloo: the barrier works on CPU and next to CUDA alike
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def plan_shards(n_images: int, n_texts: int, shard_size: int) -> list[Shard]:
    """All shards of a collection: image blocks, then text blocks."""
    shards = []
    for modality, n in (("image", n_images), ("text", n_texts)):
        for number, start in enumerate(range(0, n, shard_size)):
            shards.append(Shard(modality, number, start, min(n, start + shard_size)))
    return shards


def embed_source(
    loaded: LoadedModel,
    source: EmbedSource,
    out: str | Path,
    batch_size: int = 256,
    shard_size: int = 10_000,
    workers: int = 0,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Embed every image and text of `source` into `out` (resuming finished shards); returns `out`."""
    if batch_size < 1 or shard_size < 1:
        raise UserError(f"batch size and shard size must be positive (got {batch_size}, {shard_size})")
    out = Path(out)
    rank, world, barrier = distributed_context()
    state = {
        "fingerprint": loaded.fingerprint,
        "digest": source.digest(),
        "dim": loaded.embed_dim,
        "images": len(source.images),
        "texts": len(source.texts),
        "shard_size": shard_size,
        "source": source.description,
        "created": utc_now(),
        "complete": False,
    }
    if rank == 0:
        _prepare(out, state, source, force)
    barrier()
    if json.loads((out / STATE).read_text())["complete"]:
        log.info("%s: already complete (%d images, %d texts)", out, state["images"], state["texts"])
        return out
    todo = [s for i, s in enumerate(plan_shards(state["images"], state["texts"], shard_size))
            if i % world == rank and not (out / SHARDS / s.name).is_file()]
    bar = tqdm(total=sum(s.stop - s.start for s in todo), desc=f"embed (rank {rank})" if world > 1 else "embed",
               unit="item", disable=not progress or rank != 0)
    for shard in todo:
        vectors = _embed_shard(loaded, source, shard, batch_size, workers, bar.update)
        _save_npy(out / SHARDS / shard.name, vectors)
    bar.close()
    barrier()
    if rank == 0:
        _merge(out, state)
    barrier()
    return out


def _prepare(out: Path, state: dict, source: EmbedSource, force: bool) -> None:
    """Start a fresh output, or check that an existing one is the same job (same model, items, shards)."""
    path = out / STATE
    if path.is_file():
        old = json.loads(path.read_text())
        same = all(old.get(k) == state[k] for k in ("fingerprint", "digest", "dim", "shard_size"))
        if same:
            return
        if not force:
            raise UserError(
                f"{out} holds embeddings of another model, item list or shard size; "
                "use a new folder or --force to start over"
            )
        shutil.rmtree(out / SHARDS, ignore_errors=True)
        for name in ARRAYS.values():
            (out / name).unlink(missing_ok=True)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    source.write_lists(out)
    atomic_write_json(path, state)


def _embed_shard(
    loaded: LoadedModel, source: EmbedSource, shard: Shard, batch_size: int, workers: int, advance: Callable
) -> np.ndarray:
    """(stop − start, D) embeddings of one shard."""
    chunks = []
    if shard.modality == "image":
        paths = [Path(e.uri) for e in source.images[shard.start : shard.stop]]
        for pixels in image_loader(paths, loaded.preprocess, batch_size, workers):
            chunks.append(embed_pixels(loaded, pixels))
            advance(len(pixels))
    else:
        texts = [e.text for e in source.texts[shard.start : shard.stop]]
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            chunks.append(embed_tokens(loaded, loaded.tokenizer(batch)))
            advance(len(batch))
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getbuffer())


def _merge(out: Path, state: dict) -> None:
    """Concatenate the shards of each modality into one array file, then mark the folder complete."""
    shards = plan_shards(state["images"], state["texts"], state["shard_size"])
    for modality, name in ARRAYS.items():
        mine = [s for s in shards if s.modality == modality]
        total = state["images"] if modality == "image" else state["texts"]
        tmp = out / f".{name}.tmp"
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, state["dim"]))
        for shard in mine:
            merged[shard.start : shard.stop] = np.load(out / SHARDS / shard.name)
        merged.flush()
        del merged
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out / name)
    fsync_dir(out)
    atomic_write_json(out / STATE, {**state, "complete": True, "finished": utc_now()})
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    log.info("embedded %d images and %d texts into %s", state["images"], state["texts"], out)


def read_embeddings(folder: str | Path) -> Embedded:
    """Open a finished `retrieval embed` folder (arrays memory-mapped)."""
    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        raise UserError(f"not an embeddings folder (no {STATE}): {folder}")
    state = json.loads(path.read_text())
    if not state.get("complete"):
        raise UserError(f"{folder}: embedding did not finish; run `retrieval embed` again to resume it")
    images, texts = read_lists(folder)
    image_vectors = np.load(folder / ARRAYS["image"], mmap_mode="r")
    text_vectors = np.load(folder / ARRAYS["text"], mmap_mode="r")
    if len(images) != len(image_vectors) or len(texts) != len(text_vectors):
        raise UserError(f"{folder}: entry lists and arrays disagree in length (a damaged folder)")
    return Embedded(folder, state["fingerprint"], int(state["dim"]), images, texts, image_vectors, text_vectors)
