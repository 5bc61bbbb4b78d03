"""`retrieval data synth` (write the embedded dataset) and `retrieval data check` (validate a dataset)."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from retrieval.data.arguments import add_data_arguments, data_section
from retrieval.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval data` parser with its two subcommands."""
    parser = argparse.ArgumentParser(prog="retrieval data", description="Make or check a dataset.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{synth,check}")

    synth = sub.add_parser(
        "synth",
        help="write the embedded synthetic dataset (Karpathy JSON + PNGs)",
        description="Procedurally drawn scenes (1-4 coloured shapes, sizes, places, relations) with 5 "
        "captions each, in the Karpathy split format: OUT/dataset.json + OUT/images/. Deterministic per seed.",
    )
    synth.add_argument("--out", required=True, help="output folder (e.g. data/synth)")
    synth.add_argument("--images", type=int, default=20000, help="total images (val = test = min(1000, N/10))")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=64, help="image side in pixels")
    synth.add_argument("--workers", type=int, default=2, help="rendering processes")
    synth.add_argument("--overwrite", action="store_true", help="replace a synth dataset made with other arguments")

    check = sub.add_parser(
        "check",
        help="load and validate a dataset, print counts per split",
        description="Loads every split, checks that each image exists and decodes and that captions are "
        "not empty. Stops at the first problem (as training would), or with --skip-bad counts them all.",
    )
    add_data_arguments(check)
    check.add_argument("--no-decode", action="store_true", help="only check that image files exist (fast)")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval data`."""
    args = build_parser().parse_args(argv)
    return _synth(args) if args.action == "synth" else _check(args)


def _synth(args: argparse.Namespace) -> int:
    from retrieval.data.synth.generate import generate, split_sizes

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    path = generate(args.out, n_images=args.images, seed=args.seed, size=args.size, workers=args.workers,
                    overwrite=args.overwrite)
    sizes = ", ".join(f"{split} {n}" for split, n in split_sizes(args.images).items())
    print(f"{path}: {args.images} images ({sizes}), 5 captions each, {time.perf_counter() - start:.1f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from retrieval.data.evalset import EvalSet
    from retrieval.data.records import KNOWN_SPLITS, scan_records

    cfg = data_section(args)
    records, problems = scan_records(cfg, KNOWN_SPLITS)
    if not args.no_decode:
        # Decoding is the one check the loaders leave for later; do it now, for every image.
        kept = EvalSet.from_records(records).drop_unreadable(problems, workers=int(cfg["workers"]))
        readable = set(kept.images)
        records = [r for r in records if r.path in readable]
    images, captions = Counter(), Counter()
    for record in records:
        images[record.split] += 1
        captions[record.split] += len(record.captions)
    print(f"{cfg['path']} ({cfg['format']}), images under {cfg['images'] or 'the data file folder'}")
    print(f"{'split':<8} {'images':>8} {'captions':>9} {'per image':>10}")
    for split in [s for s in KNOWN_SPLITS if images[s]] + ["total"]:
        n_img = images[split] if split != "total" else sum(images.values())
        n_cap = captions[split] if split != "total" else sum(captions.values())
        print(f"{split:<8} {n_img:>8} {n_cap:>9} {n_cap / max(n_img, 1):>10.2f}")
    print("decoding: skipped (--no-decode)" if args.no_decode else f"decoding: {len(records)} images read")
    if sum(problems.counts.values()):
        print(f"problems: {problems.summary()}")
        for message in problems.examples:
            print(f"  {message}")
    else:
        print("problems: none")
    return 0
