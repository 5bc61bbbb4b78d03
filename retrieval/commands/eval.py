"""`retrieval eval`: Recall@1/5/10 both ways, RSUM and median rank on a split, as the papers' tables.

Embeddings are computed once; every row of the table (the model, its 5-fold COCO-1K variant, the random
baseline, recall through an ANN index) is a metric function applied to them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.data.arguments import add_data_arguments, data_section
from retrieval.data.generated import CEILING_FILE
from retrieval.errors import UserError
from retrieval.metrics import TIE_RULES

CEILING_ROW = "ceiling (oracle)"
RANDOM_DIM = 128  # dimension of the random baseline when no checkpoint fixes it (chance barely depends on it)


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval eval` parser."""
    parser = argparse.ArgumentParser(
        prog="retrieval eval",
        description="Image→text and text→image Recall@K on a Karpathy/CSV split (Flickr30k/COCO protocol: "
        "an image query hits when any of its captions is in the top K).",
    )
    parser.add_argument("--checkpoint", help="checkpoint file, or a run folder (its checkpoints/best.pt)")
    add_data_arguments(parser, required=False)
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--random-baseline", action="store_true", help="add a row for random unit embeddings")
    parser.add_argument("--coco-1k", action="store_true",
                        help="add the mean over 5 folds of consecutive images (COCO-1K: 5 × 1,000 test images)")
    parser.add_argument("--index", help="also measure recall through this index folder (its ANN index and exact "
                        "search over its stored vectors) and the index's recall@10 against exact search")
    parser.add_argument("--ties", choices=TIE_RULES, default="position",
                        help="how equal scores rank: position (default; in gallery order, as a stable sort ranks them, "
                        "comparable with published tables up to exact ties) or pessimistic (every tied wrong "
                        "item ranks first)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval eval`."""
    args = build_parser().parse_args(argv)
    if args.checkpoint is None and not args.random_baseline:
        raise UserError("give --checkpoint (and/or --random-baseline)")
    if args.index is not None and args.checkpoint is None:
        raise UserError("--index needs --checkpoint (the model that built the index)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")

    from retrieval.evaluate import encode_eval_set, evaluate_embeddings, load_eval_set, random_embeddings

    loaded = None
    if args.checkpoint is not None:
        from retrieval.checkpoint import load_model

        loaded = load_model(args.checkpoint, device=args.device)
    if args.data is None and loaded is None:
        raise UserError("give --data (only a --checkpoint can supply the dataset of its training config)")
    cfg_data = data_section(args, base=loaded.config["data"] if loaded is not None else None)
    _refuse_training_rows(cfg_data, loaded)
    eval_set = load_eval_set(cfg_data, args.split)
    if args.coco_1k and eval_set.n_images < 5:
        raise UserError(f"--coco-1k needs at least 5 images in split {args.split!r}, found {eval_set.n_images}")

    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    if loaded is not None:
        start = time.perf_counter()
        embeddings["model"] = encode_eval_set(
            loaded, eval_set, args.batch_size, workers=int(cfg_data["workers"]), progress=True
        )
        seconds["encode"] = time.perf_counter() - start
    if args.random_baseline:
        dim = loaded.embed_dim if loaded is not None else RANDOM_DIM
        embeddings["random"] = (
            random_embeddings(eval_set.n_images, dim, args.seed),
            random_embeddings(eval_set.n_captions, dim, args.seed + 1),
        )

    results: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for name, (images, texts) in embeddings.items():
        results[name] = evaluate_embeddings(images, texts, eval_set, ties=args.ties)
        if args.coco_1k:
            results[f"{name} (5 folds)"] = evaluate_embeddings(images, texts, eval_set, folds=5, ties=args.ties)
    index_report = None
    if args.index is not None:
        from retrieval.index.evaluate import evaluate_through_index

        index_report = evaluate_through_index(args.index, *embeddings["model"], eval_set, loaded.fingerprint)
        results.update(index_report["rows"])
    seconds["metrics"] = time.perf_counter() - start

    ceiling = _ceiling(cfg_data, args.split, eval_set)
    print(f"split {args.split!r} of {cfg_data['path']}: {eval_set.n_images} images, {eval_set.n_captions} captions")
    print(format_table({**results, **({CEILING_ROW: ceiling} if ceiling else {})}, ties=args.ties))
    if ceiling:
        print(f"{CEILING_ROW}: expected recall of an oracle that knows every garment's class and place ({CEILING_FILE})")
    if index_report is not None:
        print(describe_index_search(index_report["search"]))
        overlap = index_report["ann_vs_exact_recall_at_10"]
        print(f"index recall@10 against exact search: images {overlap['image']:.4f}, captions {overlap['text']:.4f}")
    if args.json:
        report = {
            "data": str(cfg_data["path"]),
            "split": args.split,
            "ties": args.ties,
            "images": eval_set.n_images,
            "captions": eval_set.n_captions,
            "checkpoint": args.checkpoint,
            "fingerprint": loaded.fingerprint if loaded is not None else None,
            "results": results,
            "ceiling": ceiling,
            "seconds": seconds,
        }
        if index_report is not None:
            report["index"] = {key: index_report[key] for key in ("search", "ann_vs_exact_recall_at_10", "depth")}
        write_json(report, args.json)
    return 0


def _ceiling(cfg_data: dict[str, Any], split: str, eval_set: Any) -> dict[str, float] | None:
    """The recall ceiling recorded beside a generated dataset (`retrieval data fashion`) for this split."""
    if cfg_data.get("format", "karpathy") != "karpathy":
        return None
    from retrieval.data.fashion.ceiling import read_ceiling

    return read_ceiling(Path(str(cfg_data["path"])).expanduser(), split, eval_set.n_images, eval_set.n_captions)


def _refuse_training_rows(cfg_data: dict[str, Any], loaded: Any) -> None:
    """Refuse to evaluate on the file the model was trained on when that file names no splits.

    Such a file is every split at once, so `--split test` would report recall on the training rows. A
    different split-less file is taken as the evaluation set as a whole.
    """
    from retrieval.data.records import split_problem

    problem = split_problem(cfg_data)
    if problem is None or loaded is None:
        return
    trained = loaded.config["data"]
    same_file = Path(str(trained["path"])).expanduser().resolve() == Path(str(cfg_data["path"])).expanduser().resolve()
    if same_file and trained.get("format", "karpathy") == "csv":
        raise UserError(f"{problem}; or pass --data a held-out file of pairs")


_COLUMNS = (("i2t_r1", "R@1"), ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("i2t_medr", "medr"),
            ("t2i_r1", "R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("t2i_medr", "medr"), ("rsum", "RSUM"))


TIES_HEADER = {
    "position": "ties broken by gallery position (a stable sort)",
    "pessimistic": "ties counted against the model (a lower bound)",
}


def format_table(results: dict[str, dict[str, float]], ties: str = "position") -> str:
    """Rows = named metric dicts, columns as in the Flickr30k/COCO papers (R@K in %, medr, RSUM); the first
    line says how ties were ranked, since that moves R@K by tenths of a point on repeated captions."""
    width = max([len(name) for name in results] + [5])

    def cell(key: str, value: float | None) -> str:
        if value is None:  # a row without ranks (the ceiling)
            return f"{'—':>6}"
        integral = key.endswith("medr") and float(value).is_integer()
        return f"{value:>6.0f}" if integral else f"{value:>6.1f}"

    def row(name: str, cells: list[str]) -> str:
        return f"{name:<{width}}  {' '.join(cells[:4])}   {' '.join(cells[4:8])}   {cells[8]}"

    lines = [
        f"Recall@K in %, {TIES_HEADER[ties]}",
        f"{'':<{width}}  {'image → text':^27}   {'text → image':^27}",
        row("", [f"{label:>6}" for _, label in _COLUMNS]),
    ]
    lines += [row(name, [cell(key, metrics.get(key)) for key, _ in _COLUMNS]) for name, metrics in results.items()]
    return "\n".join(lines)


def describe_index_search(search: dict[str, dict[str, Any]]) -> str:
    """Which index, search parameters and split restriction produced the index row, per direction."""
    lines = ["index row (R@K from top-10 requests):"]
    for direction, modality in (("text → image", "image"), ("image → text", "text")):
        used = search[modality]
        params = ", ".join(f"{key}={value}" for key, value in used["search_params"].items()) or "exhaustive"
        lines.append(f"  {direction}: {modality} index {used['kind']} ({params}), split {used['split_items']:,} "
                     f"of {used['items']:,} items, restriction: {used['restriction']}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the results JSON (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
