"""`retrieval embed`: encode a dataset's images and captions, an image folder and/or a text file into arrays.

Output: OUT/image.npy, OUT/text.npy (float32, L2-normalised rows), OUT/images.jsonl, OUT/texts.jsonl
(uri/caption/metadata per row, for the item store) and OUT/embed.json. Resumable: re-running the same
command skips finished shards. Multi-process: `torchrun --nproc_per_node N -m retrieval embed ...`.
"""

from __future__ import annotations

import argparse
import os

from retrieval.data.arguments import add_data_arguments, data_section
from retrieval.errors import UserError


def add_source_arguments(parser: argparse.ArgumentParser, require_checkpoint: bool = True) -> None:
    """What to embed (--data, or --image-dir and/or --text-file) and how (batch, shards, device)."""
    parser.add_argument("--checkpoint", required=require_checkpoint, help="checkpoint file, or a run folder (its best.pt)")
    add_data_arguments(parser, required=False)
    parser.add_argument("--split", nargs="+", default=["test"],
                        help="dataset split(s) to embed, or 'all' (default: test)")
    parser.add_argument("--image-dir", help="embed every image file under this folder instead of a dataset")
    parser.add_argument("--text-file", help="embed one text per line of this UTF-8 file instead of a dataset; with "
                        "--image-dir, the texts of the same collection (e.g. sample queries: the index build "
                        "then tunes the image index on text→image queries)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=10_000, help="items per resumable shard")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: one GPU per rank)")


def embed_from_args(args: argparse.Namespace, out: str, force: bool = False, progress: bool = True) -> str:
    """Load the model, collect the source named by the options, embed it into `out`; returns `out`."""
    if bool(args.data) == bool(args.image_dir or args.text_file):
        raise UserError("give either --data, or --image-dir and/or --text-file")
    from retrieval.checkpoint import load_model
    from retrieval.embed import EmbedSource, embed_source, from_dataset, from_image_folder, from_text_file

    device = args.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    loaded = load_model(args.checkpoint, device=device)
    cfg_data = data_section(args)
    if args.data:
        source = from_dataset(cfg_data, args.split)
    else:
        parts = []
        if args.image_dir:
            parts.append(from_image_folder(args.image_dir, bool(cfg_data["skip_bad"]), int(cfg_data["workers"])))
        if args.text_file:
            parts.append(from_text_file(args.text_file))
        source = EmbedSource(" + ".join(p.description for p in parts), [e for p in parts for e in p.images],
                             [e for p in parts for e in p.texts])
    workers = int(cfg_data["workers"]) if args.image_dir or args.data else 0
    embed_source(loaded, source, out, args.batch_size, args.shard_size, workers, progress, force)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval embed` parser."""
    parser = argparse.ArgumentParser(
        prog="retrieval embed",
        description="Encode images and texts into L2-normalised float32 arrays (+ per-row entries) for "
        "`retrieval index build`. Resumable; shard across processes with torchrun.",
    )
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="discard an OUT holding another job's embeddings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval embed`."""
    args = build_parser().parse_args(argv)
    out = embed_from_args(args, args.out, args.force, not args.no_progress)
    from retrieval.embed import read_embeddings

    if int(os.environ.get("RANK", "0")) == 0:
        done = read_embeddings(out)
        print(f"{out}: {len(done.images)} images, {len(done.texts)} texts, dim {done.dim}, model {done.fingerprint}")
    return 0
