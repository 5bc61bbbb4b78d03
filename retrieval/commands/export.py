"""`retrieval export`: a checkpoint as merged plain weights — an open_clip folder or ONNX towers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `retrieval export`."""
    parser = argparse.ArgumentParser(
        prog="retrieval export",
        description=(
            "Export a checkpoint with ENN weights merged back to plain weights. open_clip: a folder for "
            "open_clip.create_model_and_transforms('local-dir:OUT'). onnx: image.onnx + text.onnx "
            "(dynamic batch, L2-normalised outputs). Every export is checked against the checkpoint."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (its best.pt)")
    parser.add_argument("--format", required=True, choices=("open_clip", "onnx"), dest="fmt")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; files are overwritten)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (≥ 17; default 18)")
    return parser


def main(argv: list[str]) -> int:
    """Load, merge, write, check; prints where the export went and how close it is to the checkpoint."""
    args = build_parser().parse_args(argv)
    if args.opset < 17:
        raise UserError(f"--opset {args.opset}: ONNX export needs opset 17 or newer")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")
    from retrieval.export import ExportCheckError, load_source, write_onnx_dir, write_open_clip_dir

    source = load_source(args.checkpoint)
    try:
        if args.fmt == "open_clip":
            manifest = write_open_clip_dir(source, args.out)
        else:
            manifest = write_onnx_dir(source, args.out, opset=args.opset)
    except ExportCheckError as err:
        print(f"retrieval export: check failed, the export in {args.out} is NOT usable: {err}", file=sys.stderr)
        return 1
    check = manifest["check"]
    print(f"exported {args.fmt} to {args.out} (model {manifest['fingerprint']}, dim {manifest['embed_dim']})")
    print(f"check vs checkpoint: image cosine ≥ {check['image_min_cosine']:.6f}, text cosine ≥ {check['text_min_cosine']:.6f}")
    if args.fmt == "open_clip":
        print(f"load with: open_clip.create_model_and_transforms('local-dir:{args.out}')")
    return 0
