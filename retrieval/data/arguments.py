"""Command-line options that select a dataset (shared by `data check`, `eval`, `embed`) → a `data` section."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retrieval.config import defaults


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--data, --images, --format, --csv-img-key, --csv-caption-key, --csv-separator, --skip-bad, --workers."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--data", required=required, help="Karpathy split JSON, or a CSV/TSV/JSONL pairs file")
    group.add_argument("--images", help="image root folder (default: the data file's folder)")
    group.add_argument("--format", choices=("karpathy", "csv"),
                       help="default: karpathy for .json, csv for anything else (.csv/.tsv/.jsonl)")
    group.add_argument("--csv-img-key", help="image path column (default: filepath)")
    group.add_argument("--csv-caption-key", help="caption column (default: title)")
    group.add_argument("--csv-separator", help=r"column separator, one character; '\t' = tab (default: tab)")
    group.add_argument("--skip-bad", action="store_true",
                       help="skip and count missing/unreadable images and empty captions instead of stopping")
    group.add_argument("--workers", type=int, help="image decoding workers (default: 2)")


def data_section(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config `data` section: defaults ← `base` (e.g. a checkpoint's) ← the options given."""
    cfg = {**defaults()["data"], **dict(base or {})}
    if args.data is not None:
        cfg["path"] = args.data
        cfg["images"] = args.images  # a new data file never inherits the old image root
        cfg["format"] = args.format or ("karpathy" if Path(args.data).suffix.lower() == ".json" else "csv")
    elif args.images is not None:
        cfg["images"] = args.images
    if args.format is not None:
        cfg["format"] = args.format
    for key in ("csv_img_key", "csv_caption_key", "workers"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.csv_separator is not None:
        cfg["csv_separator"] = "\t" if args.csv_separator in ("\\t", "tab") else args.csv_separator
    if args.skip_bad:
        cfg["skip_bad"] = True
    return cfg
