"""`retrieval serve`: the HTTP search service (FastAPI + uvicorn) over an index folder and a checkpoint.

Every option can also come from the environment as RETRIEVAL_<NAME> (e.g. RETRIEVAL_API_KEY); the
API key in particular is better passed that way than on the command line.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval serve` parser."""
    parser = argparse.ArgumentParser(
        prog="retrieval serve",
        description="Serve search over INDEX_DIR with the model that built it (OpenAPI docs at /docs).",
    )
    parser.add_argument("--index", help="index folder from `retrieval index build` (or RETRIEVAL_INDEX_DIR)")
    parser.add_argument("--checkpoint", help="checkpoint file or run folder (or RETRIEVAL_CHECKPOINT)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), help="encoder runtime (default torch)")
    parser.add_argument("--onnx-dir", help="runtime onnx: folder from `retrieval export --format onnx`")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="key for writes (Authorization: Bearer KEY); prefer RETRIEVAL_API_KEY")
    parser.add_argument("--auth-reads", action="store_true", default=None, help="require the key for reads too")
    parser.add_argument("--mmap", action="store_true", default=None,
                        help="memory-map the FAISS files read-only: a replica that follows the primary's writes")
    parser.add_argument("--memory-budget", help="e.g. 4GiB: refuse to start when the index needs more RAM")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--torch-threads", type=int, help="encoder threads (default: all cores but one)")
    parser.add_argument("--max-k", type=int)
    parser.add_argument("--max-texts", type=int, help="texts or images per request")
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument("--max-image-pixels", type=int)
    parser.add_argument("--batch-max-size", type=int)
    parser.add_argument("--batch-max-wait-ms", type=float)
    parser.add_argument("--queue-size", type=int)
    parser.add_argument("--snapshot-interval-s", type=float)
    parser.add_argument("--milvus-uri", help="index backend milvus: reach Milvus at this URI instead of the one the "
                                            "manifest records (e.g. its address inside a compose network)")
    parser.add_argument("--milvus-timeout-s", type=float,
                        help="index backend milvus: seconds one Milvus call may take before a request gets 503 (default 10)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval serve`."""
    args = vars(build_parser().parse_args(argv))
    host, port, access_log = args.pop("host"), args.pop("port"), args.pop("access_log")
    args["index_dir"] = args.pop("index")

    from service.server import run
    from service.settings import Settings

    run(Settings.from_env(**args), host=host, port=port, access_log=access_log)
    return 0
