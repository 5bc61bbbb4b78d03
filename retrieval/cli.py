"""`retrieval` console script: dispatches to one module per subcommand, imported only when used.

Each module in `retrieval.commands` exposes `main(argv: list[str]) -> int` and builds its own argparse
parser (`prog="retrieval NAME"`), so `retrieval NAME --help` is that module's help and `retrieval --help`
stays fast (no torch import).
"""

from __future__ import annotations

import importlib
import logging
import sys

from retrieval.errors import UserError

COMMANDS: dict[str, str] = {
    "data": "generate a dataset (`data synth`: drawn shapes, `data fashion`: Fashion-MNIST photos) or check one",
    "train": "contrastive training of ENN towers (backprop or ENN-ℓ local), one process or torchrun",
    "eval": "Recall@K on a Karpathy/CSV split (exact, and through an index with --index)",
    "embed": "encode images and captions of a dataset, a folder or a text file into normalised arrays",
    "index": "`index build`: FAISS indexes (flat, hnsw, ivfpq, auto) + manifest + item store",
    "export": "merged weights as an open_clip folder or ONNX towers",
    "serve": "HTTP search service (FastAPI + uvicorn) over an index and a checkpoint",
    "demo": "the whole pipeline on the embedded dataset, leaving the service running",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    return (
        "usage: retrieval COMMAND [options]   (retrieval COMMAND --help for its options)\n\n"
        "Cross-modal retrieval on Eigen Neural Network encoders.\n\ncommands:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"retrieval: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"retrieval.commands.{name}")
    try:
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"retrieval {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retrieval {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
