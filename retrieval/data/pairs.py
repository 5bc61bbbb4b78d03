"""Reader for image–caption pair files: CSV/TSV (open_clip's --csv-img-key/--csv-caption-key) and JSONL.

Rows naming the same image are grouped into one record with several captions. Splits come from a
`split` column/key when the file has one, or from a `{split}` placeholder in the path
(`pairs_{split}.tsv`); a file with neither is taken to be the requested split as a whole. A file that
names splits must name one on every line: a line without one would otherwise fall into whichever split
is being read (training rows when training, test rows when evaluating), so such a file is refused.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from retrieval.data.problems import Problems
from retrieval.data.records import KNOWN_SPLITS, ImageRecord, clean_captions, resolve_image
from retrieval.errors import UserError

logger = logging.getLogger(__name__)

SPLIT_KEY = "split"
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_pairs(
    path: Path,
    root: Path | None,
    img_key: str,
    caption_key: str,
    separator: str,
    splits: Sequence[str],
    problems: Problems,
) -> list[ImageRecord]:
    """Records of `splits` from one pairs file (or one file per split with a `{split}` path)."""
    if "{split}" in str(path):
        records = []
        for split in splits:
            split_path = Path(str(path).replace("{split}", split))
            records += _read_file(split_path, root, img_key, caption_key, separator, [split], split, problems)
        return records
    return _read_file(path, root, img_key, caption_key, separator, splits, None, problems)


def names_splits(path: Path, separator: str) -> bool:
    """Whether a pairs file says which rows belong to which split: a `{split}` path or a `split` column/key.

    A file that does not is every split at once, so it cannot serve both training and evaluation.
    """
    if "{split}" in str(path):
        return True
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix.lower() in _JSONL_SUFFIXES:
        with path.open(encoding="utf-8", errors="replace") as f:
            return any(f'"{SPLIT_KEY}"' in line and SPLIT_KEY in _json_keys(line) for line in f)
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        return SPLIT_KEY in next(csv.reader(f, delimiter=separator), [])


def _json_keys(line: str) -> set[str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return set()
    return set(row) if isinstance(row, dict) else set()


def _read_file(
    path: Path,
    root: Path | None,
    img_key: str,
    caption_key: str,
    separator: str,
    splits: Sequence[str],
    fixed_split: str | None,
    problems: Problems,
) -> list[ImageRecord]:
    """Group the rows of one file by image; `fixed_split` is the split a `{split}` path stands for."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    root = path.parent if root is None else root
    rows = _jsonl_rows if path.suffix.lower() in _JSONL_SUFFIXES else _csv_rows
    grouped: dict[Path, ImageRecord] = {}
    names_split = False  # some line has a `split` column/key (a CSV header counts for every line)
    first_without: int | None = None  # the first line that leaves its split empty or out
    for line, row in rows(path, img_key, caption_key, separator, problems):
        source = f"{path}:{line}"
        split = fixed_split or row.get(SPLIT_KEY)
        if fixed_split is None:
            names_split = names_split or SPLIT_KEY in row
            if split is None or (isinstance(split, str) and not split.strip()):
                split = None
                first_without = line if first_without is None else first_without
            if names_split and first_without is not None:
                raise UserError(f"{path}:{first_without}: no {SPLIT_KEY!r} on this line, while the file names the "
                                "split of other lines; give every line a split (train/val/test) or none")
        image, caption = row.get(img_key), row.get(caption_key)
        if not isinstance(image, str) or not image.strip():
            problems.seen += 1
            problems.report("malformed", f"{source}: no image path in {img_key!r}")
            continue
        if split is None:
            split = splits[0]
        elif split not in KNOWN_SPLITS:
            problems.seen += 1
            problems.report("unknown split", f"{source}: unknown split {split!r} (known: {', '.join(KNOWN_SPLITS)})")
            continue
        if split not in splits:
            continue
        image_path = resolve_image(image.strip(), root)
        record = grouped.get(image_path)
        if record is None:
            problems.seen += 1
            record = grouped[image_path] = ImageRecord(image_path, [], split, source)
        captions = caption if isinstance(caption, list) else [caption]
        record.captions += clean_captions(captions, source, problems)
    if not names_split and fixed_split is None:
        logger.info("%s has no %r column: all its rows are used as split %r", path, SPLIT_KEY, splits[0])
    return [r for r in grouped.values() if _usable(r, problems)]


def _usable(record: ImageRecord, problems: Problems) -> bool:
    """The cheap checks that need the whole group: some caption left, the file exists."""
    if not record.captions:
        problems.report("no captions", f"{record.source}: no captions for {record.path}")
        return False
    if not record.path.is_file():
        problems.report("missing", f"{record.source}: image file not found: {record.path}")
        return False
    return True


def _csv_rows(
    path: Path, img_key: str, caption_key: str, separator: str, problems: Problems
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row as a dict) for a CSV/TSV file with a header line."""
    if len(separator) != 1:
        raise UserError(f"data.csv_separator must be one character, got {separator!r}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=separator)
        try:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}: empty file (expected a header line)")
            for key in (img_key, caption_key):
                if key not in header:
                    raise UserError(
                        f"{path}:1: no column {key!r} in the header (columns: {', '.join(map(repr, header))}; "
                        f"separator {separator!r} — see data.csv_img_key/csv_caption_key/csv_separator)"
                    )
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(header):
                    problems.seen += 1
                    problems.report(
                        "malformed", f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                    continue
                yield reader.line_num, dict(zip(header, row, strict=True))
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num}: not valid CSV: {err}") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None


def _jsonl_rows(
    path: Path, img_key: str, caption_key: str, separator: str, problems: Problems
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for a JSON-lines file; the caption value may be a string or a list."""
    del separator  # JSONL has none; same signature as _csv_rows
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{line_no}:{err.colno}: not valid JSON: {err.msg}") from None
            if not isinstance(row, dict) or caption_key not in row:
                problems.seen += 1
                problems.report("malformed", f"{path}:{line_no}: expected an object with {img_key!r} and {caption_key!r}")
                continue
            yield line_no, row
