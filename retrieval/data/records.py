"""The common in-memory dataset: `ImageRecord`s, loaded from a Karpathy JSON or a CSV/TSV/JSONL file."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.data.problems import Problems
from retrieval.errors import UserError

logger = logging.getLogger(__name__)

# The split names of the Karpathy files; COCO's `restval` is extra training data (pass it in `splits`).
KNOWN_SPLITS = ("train", "val", "test", "restval")


@dataclass
class ImageRecord:
    """One image with all its captions; `source` says where it came from (file + entry/line) for errors."""

    path: Path
    captions: list[str]
    split: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def as_split_list(splits: str | Sequence[str]) -> list[str]:
    """Accept "test" or ["train", "restval"]."""
    return [splits] if isinstance(splits, str) else list(splits)


def resolve_image(value: str, root: Path) -> Path:
    """A path from a data file: absolute as is, relative to the image root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def clean_captions(raw: Sequence[Any], source: str, problems: Problems) -> list[str]:
    """Strip captions; empty (or non-text) ones are a problem: an error, or dropped and counted."""
    kept = []
    for k, caption in enumerate(raw):
        text = caption.strip() if isinstance(caption, str) else ""
        if text:
            kept.append(text)
        else:
            problems.report("empty captions", f"{source}: caption {k} is empty")
    return kept


def scan_records(
    cfg_data: Mapping[str, Any], splits: str | Sequence[str], skip_bad: bool | None = None
) -> tuple[list[ImageRecord], Problems]:
    """Load the records of `splits` and say what was skipped; `skip_bad=None` takes `data.skip_bad`.

    Cheap checks happen here (file exists, captions non-empty, split known); whether each image decodes
    is checked lazily where it is loaded (TrainDataset / EvalSet), or all at once by `retrieval data check`.
    """
    from retrieval.data.karpathy import read_karpathy
    from retrieval.data.pairs import read_pairs

    wanted = as_split_list(splits)
    if not wanted:
        raise ValueError("no splits requested")
    problems = Problems(bool(cfg_data.get("skip_bad", False)) if skip_bad is None else skip_bad)
    path = Path(str(cfg_data["path"])).expanduser()
    fmt = cfg_data.get("format", "karpathy")
    if fmt == "karpathy":
        records = read_karpathy(path, _image_root(cfg_data, path), wanted, problems)
    elif fmt == "csv":
        records = read_pairs(
            path,
            _image_root(cfg_data, path),
            img_key=str(cfg_data.get("csv_img_key", "filepath")),
            caption_key=str(cfg_data.get("csv_caption_key", "title")),
            separator=str(cfg_data.get("csv_separator", "\t")),
            splits=wanted,
            problems=problems,
        )
    else:
        raise UserError(f"data.format must be karpathy or csv, got {fmt!r}")
    problems.log_summary(str(path))
    if not records:
        raise UserError(f"{path}: no usable images in split(s) {', '.join(wanted)}")
    return records, problems


def split_problem(cfg_data: Mapping[str, Any]) -> str | None:
    """Why the data cannot be split into training and held-out rows (None when it can).

    Karpathy JSON always names each image's split; a pairs file must have a `split` column or a `{split}`
    path, else every split is the whole file and "validation" or "test" recall would be training recall.
    """
    from retrieval.data.pairs import names_splits

    if cfg_data.get("format", "karpathy") != "csv":
        return None
    path = Path(str(cfg_data["path"])).expanduser()
    if names_splits(path, str(cfg_data.get("csv_separator", "\t"))):
        return None
    return (
        f"{path} has no 'split' column, so every split would be all of its rows and held-out recall would be "
        "training recall: add a 'split' column (train/val/test), or use one file per split with a {split} "
        "placeholder in data.path (pairs_{split}.tsv) for a separate validation file"
    )


def load_records(
    cfg_data: Mapping[str, Any], splits: str | Sequence[str], skip_bad: bool | None = None
) -> list[ImageRecord]:
    """The records of `splits` from the `data` section of a config (format, path, images, csv_*, skip_bad)."""
    return scan_records(cfg_data, splits, skip_bad)[0]


def _image_root(cfg_data: Mapping[str, Any], path: Path) -> Path:
    """`data.images`, or the data file's own folder when it is not set."""
    root = cfg_data.get("images")
    return Path(str(root)).expanduser() if root else path.parent
