"""Filtered search at 100k items: latency and recall@10 for filters matching 1 %, 10 % and 50 % of the items.

Set-up: an index folder of N image items built by `build_index` (each kind asked for, tuned to recall@10 ≥ 0.98
unfiltered), synthetic vectors (`search_latency.synthetic_vectors`: clustered in a 64-dim subspace), and one
metadata field per item, `bucket`, a random integer in [0, 100): the filters `{"bucket": 0}`,
`{"bucket": {"lt": 10}}` and `{"bucket": {"lt": 50}}` match 1 %, 10 % and 50 % of the items, independently
of where the vectors lie. Queries are held-out vectors from the same distribution.

Measured through `IndexDir` (what the service calls, without HTTP): the filter's evaluation, cold (first use of
a field: one SQL pass; writes then update the cached column) and warm (cached columns); the filtered search, one query at a time,
k = 10, p50/p99; recall@10 against the exact filtered top-10 (brute force over the matching vectors); and
how many queries got fewer than 10 results (must be 0: the filter is applied inside the FAISS search).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/filtered_search.py [--items 100000] [--dim 256]
       [--kinds hnsw,flat,ivfpq] [--queries 300]
Writes bench/results/filtered_search.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from search_latency import synthetic_vectors

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "filtered_search.json"
FILTERS = {"1%": {"bucket": 0}, "10%": {"bucket": {"lt": 10}}, "50%": {"bucket": {"lt": 50}}}
K = 10


def build(folder: Path, vectors: np.ndarray, buckets: np.ndarray, kind: str) -> float:
    """An index folder of the vectors as image items with their bucket; returns the build seconds."""
    from retrieval.embed import Embedded, ImageEntry
    from retrieval.index import build_index

    embedded = Embedded(
        folder=folder, fingerprint="bench-filtered", dim=vectors.shape[1],
        images=[ImageEntry(f"/img/{n}.png", None, {"bucket": int(b)}) for n, b in enumerate(buckets)],
        texts=[], image_vectors=vectors, text_vectors=np.zeros((0, vectors.shape[1]), np.float32),
    )
    start = time.perf_counter()
    build_index(folder / kind, embedded, kind=kind)
    return time.perf_counter() - start


def measure(index, vectors: np.ndarray, buckets: np.ndarray, queries: np.ndarray, name: str, spec: dict | None) -> dict:
    """Filter evaluation and filtered search figures for one filter (None: unfiltered)."""
    row: dict = {"filter": name, "spec": spec}
    allowed = None
    if spec is not None:
        index.filters.invalidate()
        start = time.perf_counter()
        allowed = index.matching("image", spec)
        row["filter_cold_ms"] = (time.perf_counter() - start) * 1000
        warm = []
        for _ in range(20):
            start = time.perf_counter()
            allowed = index.matching("image", spec)
            warm.append((time.perf_counter() - start) * 1000)
        row["filter_warm_ms"] = float(np.median(warm))
        row["matching"] = int(len(allowed))
    ids = allowed - 1 if allowed is not None else np.arange(len(vectors))  # item id = position + 1
    truth = np.argsort(-(queries @ vectors[ids].T), axis=1)[:, :K]
    latencies, hits, short = [], 0, 0
    for query, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = index.search("image", query.reshape(1, -1), K, allowed=allowed)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        got = {hit.item.id for hit in found}
        hits += len(got & {int(ids[w]) + 1 for w in want})
        short += len(found) < min(K, len(ids))
        assert spec is None or all(_passes(buckets[h.item.id - 1], spec) for h in found)
    row.update(p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
               recall_at_10=hits / (K * len(queries)), queries_short_of_k=int(short))
    return row


def _passes(bucket: int, spec: dict) -> bool:
    condition = spec["bucket"]
    return bucket == condition if not isinstance(condition, dict) else bucket < condition["lt"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", default="hnsw,flat,ivfpq")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    import faiss

    from retrieval.index import IndexDir

    faiss.omp_set_num_threads(1)
    load_before = os.getloadavg()
    vectors = synthetic_vectors(args.items, args.dim, seed=1)
    queries = synthetic_vectors(args.queries, args.dim, seed=2)
    buckets = np.random.default_rng(3).integers(0, 100, args.items)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="filtered-bench-"))
    try:
        for kind in args.kinds.split(","):
            seconds = build(work, vectors, buckets, kind)
            index = IndexDir(work / kind)
            params = index.collections["image"].search_params
            for name, spec in (("none", None), *FILTERS.items()):
                row = {"kind": kind, "build_s": round(seconds, 1), "search_params": params,
                       **measure(index, vectors, buckets, queries, name, spec)}
                rows.append(row)
                print(_line(row), flush=True)
            index.close()
            shutil.rmtree(work / kind)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "filtered_search",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/filtered_search.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "items": args.items, "dim": args.dim, "queries": args.queries, "k": K,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average before {load_before[0]:.2f}, after {report['loadavg_after'][0]:.2f}; wrote "
          f"{RESULTS.relative_to(ROOT)}")
    return 0


def _line(row: dict) -> str:
    """One table row: kind, filter, matches, filter cold/warm ms, search p50/p99 ms, recall, short queries."""
    filt = (f"{row['matching']:>7} {row['filter_cold_ms']:>9.1f} {row['filter_warm_ms']:>9.2f}"
            if "matching" in row else f"{'all':>7} {'-':>9} {'-':>9}")
    return (f"{row['kind']:<6} {row['filter']:<5} {filt} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{row['recall_at_10']:>7.4f} {row['queries_short_of_k']:>6}")


if __name__ == "__main__":
    print(f"{'kind':<6} {'sel.':<5} {'matches':>7} {'cold ms':>9} {'warm ms':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'recall':>7} {'short':>6}")
    sys.exit(main())
