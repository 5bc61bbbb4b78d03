"""The same HTTP service over the two index backends: FAISS (files in INDEX_DIR) and Milvus (here Milvus Lite).

Set-up: N synthetic image items of D dims (`search_latency.synthetic_vectors`: clustered, like real embeddings)
with one metadata field `bucket`, a random integer in [0, 100), so that `{"bucket": 0}`, `{"bucket": {"lt": 10}}`
and `{"bucket": {"lt": 50}}` match 1 %, 10 % and 50 % of the items. A randomly initialised tiny model of D-dim
embeddings is served (queries are raw embeddings, so the model only has to match the index's fingerprint).
FAISS: `build_index --kind auto` (tuned to recall@10 ≥ 0.98). Milvus: `build_milvus_index --kind hnsw` into a
`milvus-lite server` process on 127.0.0.1 (its own process, reached over gRPC as a real Milvus would be).

Measured per backend, through a real `retrieval serve` process: build items/s; ingest items/s through
`POST /v1/items` (1,000 precomputed embeddings per request, --ingest items); p50/p99 at 1 client and QPS at 32
clients (`search_latency.run_load`, k = 10); recall@10 against exact search; the same for each filter
(recall against the exact filtered top-10); the service's peak RSS (and the Milvus Lite server's).

Milvus Lite is a single Python process: its figures measure our adapter's overhead plus Lite's engine on this
machine, not what a Milvus standalone or cluster serves.

Usage: .venv/bin/python bench/milvus_vs_faiss.py [--n 1000000] [--dim 128] [--seconds 10] [--backends faiss,milvus]
Writes bench/results/milvus_vs_faiss.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from mixed_load import call, start
from search_latency import free_port, peak_rss_mb, run_load, synthetic_vectors

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "milvus_vs_faiss.json"
FILTERS = {"1%": {"bucket": 0}, "10%": {"bucket": {"lt": 10}}, "50%": {"bucket": {"lt": 50}}}
K = 10
INGEST_BATCH = 1000


def tiny_checkpoint(work: Path, dim: int) -> tuple[Path, str]:
    """A randomly initialised 1-layer model making `dim`-d embeddings, and its fingerprint."""
    import torch

    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import load_config
    from retrieval.model import build_towers

    torch.manual_seed(0)
    config = load_config(None, [f"model.embed_dim={dim}",
                                "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 1, head_width: 16}",
                                "model.text_cfg={context_length: 16, width: 32, heads: 2, layers: 1}"])
    path = work / f"tiny-{dim}.pt"
    return path, save_checkpoint(path, build_towers(config), config)


def exact_top(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """Row numbers of the exact top-K of each query (among `rows`, when given), chunked over the items."""
    ids = np.arange(len(vectors)) if rows is None else rows
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    for start_row in range(0, len(ids), 200_000):
        part = ids[start_row : start_row + 200_000]
        scores = queries @ vectors[part].T
        all_s, all_i = np.hstack([best_s, scores]), np.hstack([best_i, np.broadcast_to(part, scores.shape)])
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_i


def milvus_server(work: Path) -> tuple[subprocess.Popen, str]:
    """A fresh `milvus-lite server` process; its URI once it answers."""
    from pymilvus import MilvusClient

    data = work / "milvus-lite.db"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir", str(data),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=(work / "milvus-lite.log").open("w"), stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            MilvusClient(uri=uri, timeout=2).close()
            return process, uri
        except Exception:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError("milvus-lite server did not start")


def build(backend: str, out: Path, embedded, uri: str | None) -> float:
    """Build the backend's index of `embedded` into `out`; returns the seconds it took."""
    from retrieval.index import build_index
    from retrieval.index.milvus_collection import build_milvus_index

    shutil.rmtree(out, ignore_errors=True)
    start_s = time.perf_counter()
    if backend == "faiss":
        build_index(out, embedded, kind="auto", progress=True)
    else:
        build_milvus_index(out, embedded, uri, "bench", kind="hnsw", force=True, progress=True, timeout_s=600)
    return time.perf_counter() - start_s


async def search_rows(port: int, bodies: list[bytes]) -> list[list[int]]:
    """Each search's result rows (the item uri is `synthetic/ROW.png`)."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    rows = []
    for body in bodies:
        status, payload, _ = await call(conn, "POST", "/v1/search", body)
        assert status == 200, payload[:300]
        rows.append([int(r["uri"].split("/")[1].split(".")[0]) for r in json.loads(payload)["results"]])
    conn[1].close()
    return rows


async def ingest(port: int, vectors: np.ndarray) -> float:
    """POST the vectors as new image items, INGEST_BATCH per request; items/s."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    start_s = time.perf_counter()
    for first in range(0, len(vectors), INGEST_BATCH):
        items = [{"modality": "image", "uri": f"ingest://{first + n}", "embedding": v.tolist(), "metadata": {"bucket": -1}}
                 for n, v in enumerate(vectors[first : first + INGEST_BATCH])]
        status, payload, _ = await call(conn, "POST", "/v1/items", json.dumps({"items": items}).encode(), auth=True)
        assert status == 200, payload[:300]
    conn[1].close()
    return len(vectors) / (time.perf_counter() - start_s)


def measure(port: int, pid: int, queries: np.ndarray, truth: dict[str, np.ndarray], args) -> dict:
    """Latency, QPS and recall, unfiltered and per filter."""
    out = {}
    for name, spec in {"none": None, **FILTERS}.items():
        n = len(queries) if spec is None else args.filtered_queries  # Milvus Lite filters slowly: fewer queries
        bodies = [json.dumps({"embedding": q.tolist(), "k": K, **({"filter": spec} if spec else {})}).encode()
                  for q in queries[:n]]
        found = asyncio.run(search_rows(port, bodies))
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth[name][:n].tolist(), strict=True)])
        requests = args.requests if spec is None else n
        row = {"queries": n, "recall_at_10": round(float(recall), 4),
               "one_client": asyncio.run(run_load(port, "/v1/search", bodies, 1, requests, None, pid))}
        if spec is None:
            row["clients_32"] = asyncio.run(run_load(port, "/v1/search", bodies, args.clients, None, args.seconds, pid))
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed items")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400, help="sequential requests of the unfiltered 1-client run")
    parser.add_argument("--filtered-queries", type=int, default=30,
                        help="queries (and 1-client requests) per filter: a Milvus Lite filter scans every item")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the 32-client run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--ingest", type=int, default=20_000, help="items added through POST /v1/items")
    parser.add_argument("--backends", default="faiss,milvus")
    parser.add_argument("--workdir", default="/tmp/retrieval-bench-milvus")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from retrieval.embed import Embedded, ImageEntry

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, fingerprint = tiny_checkpoint(work, args.dim)
    rng = np.random.default_rng(0)
    vectors = synthetic_vectors(args.n, args.dim, seed=1)
    buckets = rng.integers(0, 100, args.n)
    queries = synthetic_vectors(args.queries, args.dim, seed=2)
    embedded = Embedded(folder=work, fingerprint=fingerprint, dim=args.dim,
                        images=[ImageEntry(f"synthetic/{n}.png", None, {"bucket": int(b)}) for n, b in enumerate(buckets)],
                        texts=[], image_vectors=vectors, text_vectors=np.zeros((0, args.dim), np.float32))
    truth = {"none": exact_top(vectors, queries, None)}
    truth["1%"] = exact_top(vectors, queries, np.flatnonzero(buckets == 0))
    truth["10%"] = exact_top(vectors, queries, np.flatnonzero(buckets < 10))
    truth["50%"] = exact_top(vectors, queries, np.flatnonzero(buckets < 50))

    results = {}
    for backend in args.backends.split(","):
        lite, uri = milvus_server(work) if backend == "milvus" else (None, None)
        try:
            seconds = build(backend, work / f"index-{backend}", embedded, uri)
            process, port = start(work / f"index-{backend}", checkpoint, None, work / f"serve-{backend}.log")
            try:
                row = {"build_s": round(seconds, 1), "build_items_per_s": round(args.n / seconds, 1)}
                row.update(measure(port, process.pid, queries, truth, args))
                row["ingest_items_per_s"] = round(asyncio.run(ingest(port, synthetic_vectors(args.ingest, args.dim, 3))), 1)
                row["server_peak_rss_mib"] = round(peak_rss_mb(process.pid), 1)
                if lite is not None:
                    row["milvus_lite_peak_rss_mib"] = round(peak_rss_mb(lite.pid), 1)
            finally:
                process.terminate()
                process.wait(60)
        finally:
            if lite is not None:
                lite.terminate()
                lite.wait(60)
        results[backend] = row

    print(f"{'backend':<8} {'build/s':>9} {'ingest/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'QPS@32':>7} {'R@10':>6} "
          f"{'1% p50':>7} {'1% R':>6} {'10% p50':>7} {'10% R':>6} {'50% p50':>7} {'50% R':>6} {'RSS MiB':>8}")
    for backend, row in results.items():
        one = row["none"]["one_client"]
        print(f"{backend:<8} {row['build_items_per_s']:>9.0f} {row['ingest_items_per_s']:>9.0f} {one['p50_ms']:>7.2f} "
              f"{one['p99_ms']:>7.2f} {row['none']['clients_32']['qps']:>7.0f} {row['none']['recall_at_10']:>6.3f} "
              + " ".join(f"{row[f]['one_client']['p50_ms']:>7.2f} {row[f]['recall_at_10']:>6.3f}" for f in FILTERS)
              + f" {row['server_peak_rss_mib']:>8.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "benchmark": "milvus_vs_faiss",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "filters": FILTERS,
        "note": "Milvus is Milvus Lite in its own process (pure Python): the figures measure our adapter's overhead "
                "and Lite's engine on this machine, not a Milvus standalone or cluster; the load generator shares "
                "the cores with the servers",
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
