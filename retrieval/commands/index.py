"""`retrieval index build`: FAISS indexes (flat | hnsw | ivfpq | auto) + manifest + item store in INDEX_DIR.

From a `retrieval embed` folder (`--embeddings DIR`), or straight from a model and a source
(`--checkpoint CKPT --data ... | --image-dir ... | --text-file ...`; the embeddings then go to
INDEX_DIR/embeddings, resumable). `auto` picks per collection size; ANN search parameters are tuned to
reach --target-recall recall@10 against exact search. `--backend milvus --milvus-uri URI` puts the items in a
Milvus collection instead (INDEX_DIR then holds the manifest naming it; `retrieval serve` reads it from there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval.commands.embed import add_source_arguments, embed_from_args
from retrieval.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval index` parser (one action: build)."""
    parser = argparse.ArgumentParser(prog="retrieval index", description="Build search indexes.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="build")
    build = actions.add_parser(
        "build",
        prog="retrieval index build",
        description="Item store + one inner-product FAISS index per modality (image.faiss, text.faiss) + manifest.json.",
    )
    build.add_argument("--embeddings", help="a `retrieval embed` output folder")
    build.add_argument("--out", required=True, help="INDEX_DIR to create")
    build.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq", "ondisk"),
                       help="auto: flat below 20k items, HNSW up to 500k items while it fits --memory-budget, else "
                            "ondisk (IVF lists in a memory-mapped file, SQ8 codes or smaller to fit the budget)")
    build.add_argument("--target-recall", type=float, default=0.98,
                       help="recall@10 against exact search that efSearch/nprobe are tuned to reach (default 0.98)")
    build.add_argument("--memory-budget", help="RAM the serving index may take, e.g. 4GiB (default 8GiB): "
                                                "decides auto's kind and ondisk's code size")
    build.add_argument("--memory-budget-gb", type=float, help=argparse.SUPPRESS)  # older spelling
    build.add_argument("--hnsw-m", type=int, help="HNSW links per node (default 32)")
    build.add_argument("--ef-construction", type=int, help="HNSW build breadth (default 80)")
    build.add_argument("--nlist", type=int, help="IVF lists (default ≈ 4·√n)")
    build.add_argument("--pq-m", type=int, help="PQ sub-quantizers (must divide the dimension)")
    build.add_argument("--refine", choices=("SQ8", "Flat", "none"), help="IVF-PQ re-scoring vectors (default SQ8)")
    build.add_argument("--codes", help="ondisk code format: SQ8, SQ4, SQfp16, PQ<m>x8 (default: the best that fits)")
    build.add_argument("--force", action="store_true", help="replace an existing index in --out (and, with "
                                                             "--backend milvus, an existing collection)")
    build.add_argument("--backend", default="faiss", choices=("faiss", "milvus"),
                       help="index.backend: faiss (files in --out, the default) or milvus (a Milvus collection)")
    build.add_argument("--milvus-uri", help="backend milvus: a Milvus Lite file (PATH.db) or http://host:19530; "
                                            "the token, if any, comes from MILVUS_TOKEN")
    build.add_argument("--collection", help="backend milvus: the collection name (default retrieval)")
    build.add_argument("--milvus-timeout-s", type=float, default=60.0,
                       help="backend milvus: seconds one Milvus call may take (default 60)")
    add_source_arguments(build, require_checkpoint=False)  # embedding on the fly, instead of --embeddings
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval index`."""
    args = build_parser().parse_args(argv)
    if (args.embeddings is None) == (args.checkpoint is None):
        raise UserError("give --embeddings DIR, or --checkpoint with --data / --image-dir / --text-file")
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    if (args.backend == "milvus") != (args.milvus_uri is not None):
        raise UserError("--milvus-uri goes with --backend milvus, and --backend milvus needs --milvus-uri")
    if args.collection is not None and args.backend != "milvus":
        raise UserError("--collection goes with --backend milvus")

    from retrieval.embed import read_embeddings
    from retrieval.index import build_index
    from retrieval.index.budget import parse_bytes

    budget = parse_bytes(args.memory_budget)
    if budget is None and args.memory_budget_gb is not None:
        budget = int(args.memory_budget_gb * (1 << 30))

    folder = args.embeddings or embed_from_args(args, str(Path(args.out) / "embeddings"))
    embedded = read_embeddings(folder)
    overrides = {
        key: value
        for key, value in (
            ("M", args.hnsw_m), ("efConstruction", args.ef_construction), ("nlist", args.nlist), ("pq_m", args.pq_m),
            ("refine", None if args.refine == "none" else args.refine), ("codes", args.codes),
        )
        if value is not None or (key == "refine" and args.refine == "none")
    }
    if args.backend == "milvus":
        from retrieval.index.milvus_collection import build_milvus_index

        manifest = build_milvus_index(
            args.out, embedded, args.milvus_uri, args.collection, kind=args.kind, params=overrides,
            model_info={"embed_dim": embedded.dim, "embeddings": str(Path(folder).resolve())}, force=args.force,
            progress=True, timeout_s=args.milvus_timeout_s,
        )
        print(f"index {args.out}: model {manifest.fingerprint}, dim {manifest.dim}, Milvus collection "
              f"{manifest.milvus['collection']} at {manifest.milvus['uri']}")
        for modality, info in manifest.collections.items():
            print(f"  {modality:5s} {info.count:>9d} items  {info.factory}")
        return 0
    manifest = build_index(
        args.out,
        embedded,
        kind=args.kind,
        target_recall=args.target_recall,
        params=overrides,
        memory_budget=budget,
        model_info={"embed_dim": embedded.dim, "embeddings": str(Path(folder).resolve())},
        force=args.force,
        progress=True,
    )
    print(f"index {args.out}: model {manifest.fingerprint}, dim {manifest.dim}")
    for modality, info in manifest.collections.items():
        print(f"  {modality:5s} {info.count:>9d} items  {info.factory:<40s} search {json.dumps(info.search_params)}"
              f"  recall@10 vs flat {info.recall_at_10}")
    return 0
