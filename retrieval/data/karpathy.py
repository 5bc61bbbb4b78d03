"""Reader for the Karpathy split JSON (dataset_flickr30k.json, dataset_coco.json, our synth dataset)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.data.problems import Problems
from retrieval.data.records import KNOWN_SPLITS, ImageRecord, clean_captions, resolve_image
from retrieval.errors import UserError

# Entry keys that become ImageRecord fields; everything else (imgid, sentids, cocoid, ...) goes to meta.
_CONSUMED = ("filename", "filepath", "split", "sentences")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error becomes a UserError with file:line:col."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_karpathy(path: Path, root: Path, splits: Sequence[str], problems: Problems) -> list[ImageRecord]:
    """Records of the requested splits; image path = root/filepath/filename (filepath: COCO's val2014)."""
    for split in splits:
        if split not in KNOWN_SPLITS:
            raise UserError(f"unknown split {split!r}: Karpathy files use {', '.join(KNOWN_SPLITS)}")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: expected a Karpathy split file: an object with an \"images\" list")
    records = []
    for index, entry in enumerate(data["images"]):
        problems.seen += 1
        record = _parse_entry(entry, f"{path}: images[{index}]", root, splits, problems)
        if record is not None:
            records.append(record)
    return records


def _parse_entry(
    entry: Any, source: str, root: Path, splits: Sequence[str], problems: Problems
) -> ImageRecord | None:
    """One `images[i]` entry → a record, or None when it is outside `splits` or skipped as bad."""
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        problems.report("malformed", f"{source}: expected an object with a \"filename\" string")
        return None
    source = f"{source} ({entry['filename']})"
    split = entry.get("split")
    if split not in KNOWN_SPLITS:
        problems.report("unknown split", f"{source}: unknown split {split!r} (known: {', '.join(KNOWN_SPLITS)})")
        return None
    if split not in splits:
        return None
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        problems.report("malformed", f"{source}: expected a \"sentences\" list")
        return None
    captions = clean_captions([_sentence_text(s) for s in sentences], source, problems)
    if not captions:
        problems.report("no captions", f"{source}: no captions")
        return None
    path = resolve_image(str(entry.get("filepath") or ""), root) / entry["filename"]
    if not path.is_file():
        problems.report("missing", f"{source}: image file not found: {path}")
        return None
    meta = {k: v for k, v in entry.items() if k not in _CONSUMED}
    return ImageRecord(path=path, captions=captions, split=split, source=source, meta=meta)


def _sentence_text(sentence: Any) -> Any:
    """`raw`, or the joined `tokens` when a file only has tokens; anything else counts as empty."""
    if not isinstance(sentence, dict):
        return sentence if isinstance(sentence, str) else ""
    if isinstance(sentence.get("raw"), str):
        return sentence["raw"]
    tokens = sentence.get("tokens")
    return " ".join(map(str, tokens)) if isinstance(tokens, list) else ""
