"""What `retrieval embed` encodes: a dataset's images and captions, a folder of images, or a text file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.data.evalset import EvalSet
from retrieval.data.images import find_unreadable
from retrieval.data.problems import Problems
from retrieval.data.records import KNOWN_SPLITS, scan_records
from retrieval.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ImageEntry:
    """One image to embed; `uri` is its resolved file path (what the item store serves)."""

    uri: str
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEntry:
    """One text to embed; `image` is the row of the image it describes (dataset captions), if any."""

    text: str
    image: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbedSource:
    """The images and texts of one collection, in a fixed order (rows of the output arrays)."""

    description: str
    images: list[ImageEntry]
    texts: list[TextEntry]

    def digest(self) -> str:
        """Identity of the item list: a resumed run must embed exactly the same items."""
        h = hashlib.sha256()
        for entry in self.images:
            h.update(entry.uri.encode() + b"\0")
        h.update(b"\1")
        for entry in self.texts:
            h.update(entry.text.encode() + b"\0")
        return h.hexdigest()[:16]

    def write_lists(self, folder: Path) -> None:
        """images.jsonl / texts.jsonl beside the arrays: what the index's item store needs per row."""
        for name, entries in (("images.jsonl", self.images), ("texts.jsonl", self.texts)):
            with open(folder / name, "w", encoding="utf-8") as handle:
                for entry in entries:
                    handle.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")


def read_lists(folder: Path) -> tuple[list[ImageEntry], list[TextEntry]]:
    """Inverse of `EmbedSource.write_lists`."""

    def rows(name: str) -> list[dict[str, Any]]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} not found: not a `retrieval embed` output folder")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    return [ImageEntry(**r) for r in rows("images.jsonl")], [TextEntry(**r) for r in rows("texts.jsonl")]


def from_dataset(cfg_data: Mapping[str, Any], splits: Sequence[str]) -> EmbedSource:
    """Unique images (caption = the first of theirs) and every caption of `splits` of a Karpathy/CSV dataset."""
    wanted = list(KNOWN_SPLITS) if list(splits) == ["all"] else list(splits)
    records, problems = scan_records(cfg_data, wanted)
    eval_set = EvalSet.from_records(records, name="+".join(wanted))
    if problems.skip:
        eval_set = eval_set.drop_unreadable(problems, workers=int(cfg_data.get("workers", 2)))
        problems.log_summary(str(cfg_data["path"]))
    split_of = {record.path: record.split for record in records}
    meta_of = {record.path: record.meta for record in records}
    captions_of: list[list[str]] = [[] for _ in eval_set.images]
    for caption, owner in zip(eval_set.captions, eval_set.text_to_image, strict=True):
        captions_of[owner].append(caption)
    images = []
    for path, captions in zip(eval_set.images, captions_of, strict=True):
        meta = {**_jsonable(meta_of[path]), "split": split_of[path], "captions": captions}
        images.append(ImageEntry(str(Path(path).resolve()), captions[0], meta))
    texts = [
        TextEntry(caption, int(owner), {"split": split_of[eval_set.images[owner]]})
        for caption, owner in zip(eval_set.captions, eval_set.text_to_image, strict=True)
    ]
    return EmbedSource(f"{cfg_data['path']} ({', '.join(wanted)})", images, texts)


def from_image_folder(folder: str | Path, skip_bad: bool = False, workers: int = 2) -> EmbedSource:
    """Every image file under `folder` (recursively, sorted); unreadable files stop, or are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    bad = find_unreadable(paths, workers)
    if bad:
        problems = Problems(skip_bad)
        problems.seen = len(paths)
        for reason in bad.values():
            problems.report("unreadable", reason)
        problems.log_summary(str(root))
        paths = [p for p in paths if p not in bad]
    images = [ImageEntry(str(p.resolve()), None, {"file": str(p.relative_to(root))}) for p in paths]
    return EmbedSource(str(root), images, [])


def from_text_file(path: str | Path) -> EmbedSource:
    """One text per non-blank line of a UTF-8 file (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    texts = [TextEntry(line.strip(), None, {"line": n}) for n, line in enumerate(lines, 1) if line.strip()]
    if not texts:
        raise UserError(f"{path}: no text lines")
    return EmbedSource(str(path), [], texts)


def _jsonable(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset metadata that survives JSON (anything else is dropped rather than failing the run)."""
    out = {}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out
