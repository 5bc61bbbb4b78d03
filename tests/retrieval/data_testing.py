"""Helpers that write tiny real datasets (PNG files + Karpathy JSON), shared by the data/eval tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


def write_png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> Path:
    """A small solid-colour PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def karpathy_entry(filename: str, split: str, captions: list[str], filepath: str | None = None, **extra: Any) -> dict:
    """One `images[i]` entry exactly as in dataset_flickr30k.json / dataset_coco.json."""
    entry: dict[str, Any] = {"filename": filename, "split": split, **extra}
    if filepath is not None:
        entry["filepath"] = filepath
    entry["sentences"] = [{"raw": c, "tokens": c.lower().split()} for c in captions]
    return entry


def write_karpathy(path: Path, entries: list[dict], name: str = "tiny") -> Path:
    """Write a Karpathy split JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": name, "images": entries}))
    return path


@dataclass
class TinyDataset:
    """A written dataset: the data file, the image root and the entries it holds."""

    data: Path
    images: Path
    entries: list[dict]

    def cfg(self, **overrides: Any) -> dict[str, Any]:
        """A config `data` section pointing at it."""
        return {"format": "karpathy", "path": str(self.data), "images": str(self.images), "skip_bad": False,
                "workers": 0, **overrides}


def make_tiny_karpathy(root: Path, splits: dict[str, int], captions: int = 3, size: int = 16) -> TinyDataset:
    """root/dataset.json + root/images/imgNNN.png, distinct colours, captions "picture K caption C"."""
    entries, k = [], 0
    for split, count in splits.items():
        for _ in range(count):
            name = f"img{k:03d}.png"
            write_png(root / "images" / name, ((40 * k) % 256, 100, 200 - k), size)
            entries.append(karpathy_entry(name, split, [f"picture {k} caption {c}" for c in range(captions)], imgid=k))
            k += 1
    return TinyDataset(write_karpathy(root / "dataset.json", entries), root / "images", entries)
