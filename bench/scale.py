"""Scaling curve of the service: build, start-up, latency, QPS, recall and memory at growing collection sizes.

For each size N and dimension D: N clustered synthetic image vectors (written chunk by chunk to a memory-mapped
.npy, never held twice), 10k caption vectors, an index built by the service's own `build_index` (`--kind`,
default auto under `--memory-budget`) in a child process (its build time and peak memory measured), then a
real `retrieval serve` process: its start-up time to /readyz, text→image latency for one client (query
encoding included: real synth captions through the model), QPS at 32 clients, recall@10 of the service
against exact search on held-out query vectors (`embedding` searches, drawn from the same distribution), the
server's RSS; side by side, the same held-out queries through bare FAISS on the same index file. Last,
ingest: bulk POST /v1/items of precomputed embeddings (`items` with `embedding`, 500 per request, from 4
connections, each request acknowledged after its commit) while one client searches (its latency reported).

Model: D = the demo model's dimension → the checkpoint `search_latency.pick_model` picks; any other D → a
randomly initialised demo config with `model.embed_dim=D` (encoding costs the same; vectors are synthetic).

Real embeddings instead (`--embeddings DIR --checkpoint CKPT`): the image vectors of a finished `retrieval
embed` folder (e.g. a million rendered synth images) are indexed as the service's own `retrieval index build
--embeddings` would, CKPT (the model that made them) serves, and recall is measured on text→image queries:
the bench's synth captions encoded by CKPT, against exact search over the folder's vectors. The build gets
~2,000 captions of a second sample of synth images (none of them a recall query) as the folder's texts, as `retrieval embed --image-dir …
--text-file QUERIES` would give it, so the image index is tuned on text→image queries.

Usage: .venv/bin/python bench/scale.py --sizes 100000 1000000 10000000 --dims 128 512 [--memory-budget 4GiB]
Writes bench/results/scale.json (--out to change).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_vectors import TEXTS, Entries, caption_vectors, clustered, with_texts  # noqa: E402
from search_latency import (  # noqa: E402
    cpu_seconds,
    free_port,
    peak_rss_mb,
    pick_model,
    queries,
    request,
    run_load,
    synth_dataset,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale.json"
API_KEY = "scale-bench-key"


def build_child(work: Path, index: Path, n: int, dim: int, fingerprint: str, kind: str, budget: str, target: float,
                report: Path, embeddings: str | None = None, checkpoint: Path | None = None,
                tune_captions: Sequence[str] = ()) -> None:
    """In a child process: vectors (or a `retrieval embed` folder, with `tune_captions` encoded by `checkpoint`
    as its texts), then `build_index`; writes build time and the process's peak RSS."""
    import faiss

    from retrieval.embed import Embedded, ImageEntry, TextEntry, read_embeddings
    from retrieval.index import build_index
    from retrieval.index.budget import parse_bytes

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    if embeddings:
        embedded = with_texts(read_embeddings(embeddings), tune_captions, caption_vectors(checkpoint, tune_captions))
    else:
        vectors = work / f"vectors-{n}-{dim}.npy"
        if not vectors.is_file():
            clustered(n, dim, seed=1, out=vectors.with_suffix(".tmp.npy"))
            vectors.with_suffix(".tmp.npy").rename(vectors)
        embedded = Embedded(
            folder=work, fingerprint=fingerprint, dim=dim,
            images=Entries(n, lambda i: ImageEntry(f"synthetic/{i}.png", None, {})),
            texts=Entries(TEXTS, lambda j: TextEntry(f"synthetic caption {j}", None, {})),
            image_vectors=np.load(vectors, mmap_mode="r"), text_vectors=clustered(TEXTS, dim, seed=2),
        )
    start = time.perf_counter()
    manifest = build_index(index, embedded, kind=kind, memory_budget=parse_bytes(budget), target_recall=target,
                           progress=True, force=True)
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / (1 << 20)
    report.write_text(json.dumps({"build_s": round(time.perf_counter() - start, 1), "build_peak_rss_gib": round(peak, 2),
                                  "stats": manifest.collections["image"].build_stats}))


def retune(index: Path, vectors: np.ndarray, other: np.ndarray, target: float) -> None:
    """Tune an earlier build's image index again to `target` with the current tuner (as `build_index` tunes
    it), and write the new search parameters into its manifest: the build is reused, its figures stay those
    of its report."""
    from retrieval.index import make_probe, read_manifest, tune
    from retrieval.index.manifest import write_manifest
    from retrieval.index.ondisk import DiskCollection

    manifest = read_manifest(index)
    info = manifest.collections["image"]
    if info.kind != "ondisk":
        return  # flat needs no tuning; HNSW reached its target at the sizes measured
    collection = DiskCollection("image", index, info.file, {})
    ids = np.arange(1, len(vectors) + 1)  # images are stored first: ids 1..n (Entries order)
    manifest.target_recall = target
    info.search_params, recall = tune(collection, make_probe(vectors, ids, other), target)
    info.recall_at_10 = round(float(recall), 4)
    write_manifest(index, manifest)


def model_for(dim: int, work: Path) -> tuple[Path, str]:
    """The demo checkpoint when it makes `dim`-d embeddings, else a random demo config of that dimension."""
    from retrieval.checkpoint import read_checkpoint

    path, note = pick_model(None, work)
    if int(read_checkpoint(path)["model_cfg"]["embed_dim"]) == dim:
        return path, note
    import torch

    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import load_config
    from retrieval.model import build_towers

    out = work / f"random-synth-small-{dim}d.pt"
    if not out.is_file():
        torch.manual_seed(0)
        config = load_config(ROOT / "configs" / "synth-small.yaml", [f"model.embed_dim={dim}"])
        save_checkpoint(out, build_towers(config), config)
    return out, f"randomly initialised configs/synth-small.yaml with embed_dim={dim}"


def serve(index: Path, checkpoint: Path, log: Path) -> tuple[subprocess.Popen, int, float]:
    """`retrieval serve` with an API key; returns it, its port and the seconds until /readyz answered 200."""
    port = free_port()
    env = {**os.environ, "RETRIEVAL_API_KEY": API_KEY}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--index", str(index), "--checkpoint",
                                str(checkpoint), "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env=env)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if asyncio.run(request(port, "GET", "/readyz", b""))[0] == 200:
                return process, port, time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.1)


def bare_faiss(index: Path, held_out: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """p50 ms of one-query searches and recall@10 straight on the index file (no service)."""
    import faiss

    from retrieval.index import read_index, read_manifest
    from retrieval.index.factory import set_search_params
    from retrieval.index.ondisk import open_base

    faiss.omp_set_num_threads(1)
    info = read_manifest(index).collections["image"]
    ann = open_base(index / info.file) if info.kind == "ondisk" else read_index(index / info.file)
    set_search_params(ann, info.kind, info.search_params)
    times, found = [], []
    for query in held_out:
        start = time.perf_counter()
        found.append(ann.search(query.reshape(1, -1), 10)[1][0])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), overlap(np.array(found), truth)


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))


async def service_recall(port: int, held_out: np.ndarray, truth: np.ndarray) -> float:
    conn = await asyncio.open_connection("127.0.0.1", port)
    found = []
    for query in held_out:
        body = json.dumps({"embedding": query.tolist(), "target": "image", "k": 10}).encode()
        _, payload = await request(port, "POST", "/v1/search", body, conn)
        found.append([hit["id"] for hit in json.loads(payload)["results"]] + [-1] * 10)
    conn[1].close()
    return overlap(np.array([f[:10] for f in found]), truth)


def ingest_bodies(dim: int, count: int, per_request: int) -> list[bytes]:
    """`count` distinct POST /v1/items bodies of `per_request` items with precomputed embeddings (half image
    items with a URL, half texts), made before the clock starts: the client's JSON encoding is not measured."""
    vectors = clustered(count * per_request, dim, seed=4)
    bodies = []
    for b in range(count):
        items = []
        for i in range(per_request):
            vector = [round(float(x), 6) for x in vectors[b * per_request + i]]  # 6 decimals: ample for float32 cosine
            items.append({"modality": "image", "uri": f"https://example.com/{b}/{i}.jpg", "caption": f"bulk {b}-{i}",
                          "embedding": vector} if i % 2 else {"text": f"bulk caption {b}-{i}", "embedding": vector})
        bodies.append(json.dumps({"items": items}).encode())
    return bodies


async def ingest(port: int, seconds: float, search_body: bytes, bodies: list[bytes], clients: int,
                 server_pid: int) -> dict:
    """Bulk adds of precomputed embeddings (`bodies`, with auth) from `clients` connections for `seconds`,
    while one client keeps searching; every add is acknowledged only after its commit. The server's CPU time
    per item added (searches included) says what its cores allow, whatever else runs on the machine."""
    added, latencies, deadline = [0], [], time.perf_counter() + seconds
    auth = f"Authorization: Bearer {API_KEY}\r\n"

    async def writer(first: int) -> None:
        reader, stream = await asyncio.open_connection("127.0.0.1", port)
        n = first
        while time.perf_counter() < deadline:
            body = bodies[n % len(bodies)]
            head = (f"POST /v1/items HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            stream.write(head.encode() + body)
            header = await reader.readuntil(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in header.split(b"\r\n") if h.lower().startswith(b"content-length"))
            payload = await reader.readexactly(length)
            if int(header.split(b" ", 2)[1]) != 200:
                raise RuntimeError(f"add failed: {payload[:300]!r}")
            added[0] += len(json.loads(payload)["ids"])
            n += clients
        stream.close()

    async def searcher() -> None:
        conn = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            status, _ = await request(port, "POST", "/v1/search", search_body, conn)
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"search failed during ingest: {status}")
        conn[1].close()

    start, cpu = time.perf_counter(), cpu_seconds(server_pid)
    await asyncio.gather(searcher(), *(writer(c) for c in range(clients)))
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(server_pid) - cpu
    return {"api_items_per_s": round(added[0] / elapsed, 1), "api_items_added": added[0],
            "api_items_per_request": len(json.loads(bodies[0])["items"]), "api_clients": clients,
            "searches_per_s_meanwhile": round(len(latencies) / elapsed, 1),
            "search_p50_ms_meanwhile": round(float(np.percentile(latencies, 50)), 2),
            "search_p99_ms_meanwhile": round(float(np.percentile(latencies, 99)), 2),
            "server_cpu_ms_per_item": round(1000 * cpu / max(1, added[0]), 3),
            "load_average_1min": os.getloadavg()[0]}


def measure(n: int, dim: int, args, work: Path) -> tuple[dict, dict]:
    from retrieval.checkpoint import read_checkpoint

    real = args.embeddings is not None
    if real:
        from retrieval.embed import read_embeddings

        checkpoint, model_note = Path(args.checkpoint), f"checkpoint {args.checkpoint} (it made the embeddings)"
        vectors = read_embeddings(args.embeddings).image_vectors
        name = f"real-{n}-{dim}"
    else:
        checkpoint, model_note = model_for(dim, work)
        vectors = None  # written by the build child
        name = f"{n}-{dim}"
    fingerprint = read_checkpoint(checkpoint)["fingerprint"]
    dataset = synth_dataset(work)
    captions, _ = queries(dataset)
    seen = set(captions[: args.queries])  # the recall queries; tuning draws a second sample of images
    tune_captions = [c for c in queries(dataset, seed=1)[0] if c not in seen] if real else []
    index = work / f"index-{name}"
    report = work / f"build-{name}.json"
    if args.reuse_builds and report.is_file() and (index / "manifest.json").is_file():
        retune(index, vectors if real else np.load(work / f"vectors-{n}-{dim}.npy", mmap_mode="r"),
               caption_vectors(checkpoint, tune_captions) if real else clustered(TEXTS, dim, seed=2), args.target_recall)
    else:  # spawn, not fork: this process has used FAISS's OpenMP (exact search for the previous size), and a
        # forked child's first OpenMP call then waits forever on the parent's thread team (libgomp is not fork-safe)
        child = multiprocessing.get_context("spawn").Process(
            target=build_child, args=(work, index, n, dim, fingerprint, args.kind, args.memory_budget,
                                       args.target_recall, report, args.embeddings, checkpoint, tune_captions))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"build of {n}×{dim} failed (exit {child.exitcode})")
    built = json.loads(report.read_text())
    manifest = json.loads((index / "manifest.json").read_text())
    info = manifest["collections"]["image"]

    from retrieval.index.tune import exact_search

    if real:
        held_out = caption_vectors(checkpoint, captions[: args.queries])
    else:
        held_out = clustered(args.queries, dim, seed=3)
        vectors = np.load(work / f"vectors-{n}-{dim}.npy", mmap_mode="r")
    truth = exact_search(held_out, vectors, np.arange(1, n + 1), 10)
    bare_p50, bare_recall = bare_faiss(index, held_out, truth)

    bodies = [json.dumps({"text": c, "target": "image", "k": 10}).encode() for c in captions]
    process, port, startup = serve(index, checkpoint, work / f"server-{name}.log")
    try:
        asyncio.run(run_load(port, "/v1/search", bodies, 1, 50, None, process.pid))  # warm-up
        one = asyncio.run(run_load(port, "/v1/search", bodies, 1, args.requests, None, process.pid))
        many = asyncio.run(run_load(port, "/v1/search", bodies, 32, None, args.seconds, process.pid))
        recall = asyncio.run(service_recall(port, held_out, truth))
        rss = peak_rss_mb(process.pid) / 1024
        added = {}
        if args.ingest_seconds:
            pool = ingest_bodies(dim, args.ingest_bodies, args.ingest_batch)
            added = asyncio.run(ingest(port, args.ingest_seconds, bodies[0], pool, args.ingest_clients, process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    store = sum(p.stat().st_size for p in index.glob("items.sqlite*"))
    row = {
        "items": n, "dim": dim, "index": info["factory"], "kind": info["kind"], "search_params": info["search_params"],
        "target_recall": manifest["target_recall"],
        "build_s": built["build_s"], "build_peak_rss_gib": built["build_peak_rss_gib"],
        "p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], "qps_32": many["qps"], "errors": one["errors"] + many["errors"],
        "recall_at_10": round(recall, 4), "bare_faiss_recall_at_10": round(bare_recall, 4),
        "server_rss_gib": round(rss, 2), "startup_s": round(startup, 2), "store_gib": round(store / (1 << 30), 3),
        "bare_faiss_p50_ms": round(bare_p50, 3), "model": model_note,
        "vectors": (f"real: the image embeddings in {args.embeddings}; recall queries: synth captions encoded by the "
                    "same model (text→image)") if real else
                   ("clustered synthetic (1,000 clusters in a 64-d subspace + noise); queries: held-out vectors of the "
                    "same distribution for recall, synth captions through the model for latency"),
    }
    return row, {"index_vectors_per_s": round(built["stats"].get("add_vectors_per_s", 0.0), 1), **added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128])
    parser.add_argument("--kind", default="auto", help="index kind for build_index (default auto)")
    parser.add_argument("--memory-budget", default="4GiB", help="build's --memory-budget (default 4GiB)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 the build tunes nprobe/efSearch to (default 0.95, the issue's goal; the CLI's is 0.98)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries for recall and bare FAISS")
    parser.add_argument("--requests", type=int, default=300, help="sequential 1-client requests")
    parser.add_argument("--seconds", type=float, default=10.0, help="32-client run length")
    parser.add_argument("--ingest-seconds", type=float, default=10.0, help="API ingest run (0: skip)")
    parser.add_argument("--ingest-batch", type=int, default=500, help="items (precomputed embeddings) per add request")
    parser.add_argument("--ingest-clients", type=int, default=4, help="concurrent add connections")
    parser.add_argument("--ingest-bodies", type=int, default=16, help="distinct add bodies, made before timing")
    parser.add_argument("--workdir", default="/tmp/retrieval-scale", help="vectors and indexes (large: see docs/scale.md)")
    parser.add_argument("--reuse-builds", action="store_true",
                        help="reuse an index already built in --workdir (its build figures), re-tuned with the current tuner")
    parser.add_argument("--embeddings", help="a finished `retrieval embed` folder: index its image vectors (real "
                                             "embeddings) instead of synthetic ones; needs --checkpoint")
    parser.add_argument("--checkpoint", help="with --embeddings: the model that made them (serves and encodes queries)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if (args.embeddings is None) != (args.checkpoint is None):
        parser.error("--embeddings and --checkpoint go together")
    if args.embeddings:
        from retrieval.embed import read_embeddings

        embedded = read_embeddings(args.embeddings)
        args.sizes, args.dims = [len(embedded.image_vectors)], [embedded.dim]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows, ingest_rates = [], {}
    for dim in args.dims:
        for n in args.sizes:
            row, rates = measure(n, dim, args, work)
            rows.append(row)
            if n == max(args.sizes):
                ingest_rates[f"{n}x{dim}"] = rates
            print(json.dumps(row), flush=True)
    print(f"{'items':>10} {'dim':>4} {'index':<24} {'build s':>8} {'p50':>6} {'p99':>6} {'QPS32':>7} {'R@10':>6} "
          f"{'bare R':>6} {'RSS GiB':>7} {'start s':>7} {'store GiB':>9} {'bare p50':>8}")
    for r in rows:
        print(f"{r['items']:>10} {r['dim']:>4} {r['index']:<24} {r['build_s']:>8.1f} {r['p50_ms']:>6.2f} {r['p99_ms']:>6.2f} "
              f"{r['qps_32']:>7.1f} {r['recall_at_10']:>6.3f} {r['bare_faiss_recall_at_10']:>6.3f} {r['server_rss_gib']:>7.2f} "
              f"{r['startup_s']:>7.2f} {r['store_gib']:>9.3f} {r['bare_faiss_p50_ms']:>8.3f}")
    print("ingest:", json.dumps(ingest_rates))
    largest = ingest_rates[max(ingest_rates, key=lambda key: int(key.split("x")[0]))] if ingest_rates else {}
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1min": os.getloadavg()[0]},
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "ingest": {"index_vectors_per_s": largest.get("index_vectors_per_s"), "api_items_per_s": largest.get("api_items_per_s"),
                   "by_size": ingest_rates},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
