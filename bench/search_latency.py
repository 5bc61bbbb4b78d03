"""Search latency and throughput of the HTTP service: text→image and image→text over 100k indexed items.

Set-up: the demo model (the best checkpoint under runs/, else a randomly initialised model of the demo
config; the output says which), a real `retrieval serve` process on 127.0.0.1, and an index of N
items per modality built by `build_index` (auto kind, tuned to recall@10 ≥ 0.98 against exact search).
The index vectors are synthetic (clustered in a 64-dim subspace, see `synthetic_vectors`): a random
model's embeddings are nearly all alike, which would make a degenerate collection. Queries go through
the real encoders (synth captions; synth images sent as base64).

Load: a bounded asyncio load generator with keep-alive connections (raw HTTP/1.1, so the client costs
little CPU next to the server on the same cores): 1 client for --requests sequential requests, then 32
clients for --seconds. It stops by itself. Reported: p50/p99 latency, QPS, errors, the server's peak RSS.

Usage: .venv/bin/python bench/search_latency.py [--items 100000] [--seconds 10] [--checkpoint CKPT]
Writes bench/results/search_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "search_latency.json"
TARGETS = {"p50_ms_1_client": 10.0, "p99_ms_1_client": 30.0, "qps_32_clients": 300.0, "recall_at_10": 0.98}


def pick_model(given: str | None, work: Path) -> tuple[Path, str]:
    """The checkpoint to serve and a sentence saying what it is."""
    if given:
        return Path(given), f"checkpoint {given}"
    from retrieval.checkpoint import read_checkpoint

    best = None
    for path in sorted(ROOT.glob("runs/**/checkpoints/best.pt")):
        rsum = float((read_checkpoint(path).get("metrics") or {}).get("rsum", -1.0))
        if best is None or rsum > best[1]:
            best = (path, rsum)
    if best is not None:
        return best[0], f"trained checkpoint {best[0].relative_to(ROOT)} (validation RSUM {best[1]:.1f})"
    import torch

    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import load_config
    from retrieval.model import build_towers

    config_path = ROOT / "configs" / "synth-small.yaml"
    if not config_path.is_file():
        config_path = ROOT / "configs" / "synth-tiny.yaml"
    torch.manual_seed(0)
    config = load_config(config_path)
    path = work / f"random-{config_path.stem}.pt"
    save_checkpoint(path, build_towers(config), config)
    return path, f"randomly initialised {config_path.relative_to(ROOT)} (no trained checkpoint under runs/)"


def synth_dataset(work: Path) -> Path:
    """The demo dataset if it was generated, else a small synth dataset for queries."""
    demo = ROOT / "data" / "synth" / "dataset.json"
    if demo.is_file():
        return demo
    from retrieval.data.synth.generate import generate

    return generate(work / "synth", n_images=600, seed=0, progress=False)


def synthetic_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) unit vectors with a collection-like structure: 1,000 clusters in a shared 64-dim subspace
    (wide clusters, so neighbours are not trivial) plus isotropic noise. Seeds differ per modality; the
    subspace and cluster centres are shared, so each modality's vectors are plausible queries for the other."""
    shared = np.random.default_rng(12345)
    rank = min(64, dim)
    basis = np.linalg.qr(shared.standard_normal((dim, rank)))[0].T  # (rank, dim), orthonormal rows
    centres = shared.standard_normal((1000, rank))
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, rank))
    vectors = latent @ basis + 0.2 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def build_bench_index(checkpoint: Path, out: Path, items: int) -> None:
    """An index of `items` synthetic vectors per modality, tagged with the served model's fingerprint."""
    from retrieval.checkpoint import read_checkpoint
    from retrieval.embed import Embedded, ImageEntry, TextEntry
    from retrieval.index import build_index

    if (out / "manifest.json").is_file():
        return
    payload = read_checkpoint(checkpoint)
    dim = int(payload["model_cfg"]["embed_dim"])
    embedded = Embedded(
        folder=out,
        fingerprint=payload["fingerprint"],
        dim=dim,
        images=[ImageEntry(f"synthetic/{n}.png", f"synthetic image {n}", {}) for n in range(items)],
        texts=[TextEntry(f"synthetic caption {n}", None, {}) for n in range(items)],
        image_vectors=synthetic_vectors(items, dim, seed=1),
        text_vectors=synthetic_vectors(items, dim, seed=2),
    )
    build_index(out, embedded, kind="auto")


def queries(dataset: Path, n: int = 400, seed: int = 0) -> tuple[list[str], list[Path]]:
    """Real query inputs: captions and image files of the synth dataset."""
    entries = random.Random(seed).sample(json.loads(dataset.read_text())["images"], n)
    root = dataset.parent / "images"
    return [s["raw"] for e in entries for s in e["sentences"]], [root / e["filename"] for e in entries]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, checkpoint: Path, threads: int | None, log: Path) -> tuple[subprocess.Popen, int]:
    """`retrieval serve` in its own process; waits until /readyz says ready."""
    port = free_port()
    command = [sys.executable, "-m", "retrieval", "serve", "--index", str(index), "--checkpoint", str(checkpoint),
               "--port", str(port)] + (["--torch-threads", str(threads)] if threads else [])
    env = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_API_KEY"}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if asyncio.run(request(port, "GET", "/readyz", b""))[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("server did not become ready")


async def request(port: int, method: str, path: str, body: bytes, conn=None) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh or kept-alive connection (reader, writer)."""
    reader, writer = conn or await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length"))
    payload = await reader.readexactly(length)
    if conn is None:
        writer.close()
    return status, payload


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(port: int, path: str, bodies: list[bytes], clients: int, requests: int | None,
                   seconds: float | None, server_pid: int) -> dict:
    """`clients` keep-alive clients sending `bodies` round-robin; per-request latency in ms, and the CPU
    time server and load generator spent per request (what the QPS would be on idle cores follows)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds if seconds else None
    budget = [requests or 0]

    async def client(offset: int) -> None:
        nonlocal errors
        conn = await asyncio.open_connection("127.0.0.1", port)
        n = offset
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if deadline is None:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            start = time.perf_counter()
            status, _ = await request(port, "POST", path, bodies[n % len(bodies)], conn)
            latencies.append((time.perf_counter() - start) * 1000)
            errors += status != 200
            n += clients
        conn[1].close()

    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    values = np.array(latencies)
    return {
        "clients": clients,
        "requests": len(values),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "qps": round(len(values) / elapsed, 1),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p90_ms": round(float(np.percentile(values, 90)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / len(values), 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / len(values), 2),
    }


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="indexed items per modality")
    parser.add_argument("--requests", type=int, default=400, help="sequential requests of the 1-client runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each 32-client run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, help="server encoder (torch) threads (default: the server's own)")
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of picking one")
    parser.add_argument("--workdir", default="/tmp/retrieval-bench", help="cached model/index between runs")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, model_note = pick_model(args.checkpoint, work)
    from retrieval.checkpoint import read_checkpoint

    fingerprint = read_checkpoint(checkpoint)["fingerprint"]
    index = work / f"index-{fingerprint}-{args.items}-clustered"
    cached = (index / "manifest.json").is_file()
    start = time.perf_counter()
    build_bench_index(checkpoint, index, args.items)
    build_seconds = None if cached else round(time.perf_counter() - start, 1)
    captions, image_paths = queries(synth_dataset(work))
    manifest = json.loads((index / "manifest.json").read_text())

    text_bodies = [json.dumps({"text": c, "target": "image", "k": 10}).encode() for c in captions]
    image_bodies = [json.dumps({"image_b64": base64.b64encode(p.read_bytes()).decode(), "target": "text", "k": 10})
                    .encode() for p in image_paths]
    process, port = start_server(index, checkpoint, args.threads, work / "server.log")
    load_before = os.getloadavg()[0]
    runs = {}
    try:
        for name, bodies in (("text→image", text_bodies), ("image→text", image_bodies)):
            asyncio.run(run_load(port, "/v1/search", bodies, 1, 50, None, process.pid))  # warm-up
            runs[name] = {
                "1 client": asyncio.run(run_load(port, "/v1/search", bodies, 1, args.requests, None, process.pid)),
                f"{args.clients} clients": asyncio.run(run_load(port, "/v1/search", bodies, args.clients, None,
                                                                args.seconds, process.pid)),
            }
        rss = peak_rss_mb(process.pid)
        load_after = os.getloadavg()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    print(f"model: {model_note}")
    print(f"index: {args.items} items per modality; " + ", ".join(
        f"{m} {c['kind']} {c['search_params']} recall@10 {c['recall_at_10']}" for m, c in manifest["collections"].items()))
    print(f"{'query':<12} {'clients':>7} {'requests':>8} {'QPS':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'server CPU ms/req':>17} {'client CPU ms/req':>17}")
    for name, by_clients in runs.items():
        for result in by_clients.values():
            print(f"{name:<12} {result['clients']:>7} {result['requests']:>8} {result['qps']:>8.1f} "
                  f"{result['p50_ms']:>8.2f} {result['p90_ms']:>8.2f} {result['p99_ms']:>8.2f} {result['errors']:>6} "
                  f"{result['server_cpu_ms_per_request']:>17.2f} {result['client_cpu_ms_per_request']:>17.2f}")
    print(f"server peak RSS: {rss:.0f} MiB; machine load average (1 min) {load_before:.1f} before, "
          f"{load_after:.1f} after, on {os.cpu_count()} cores")

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)}},
        "command": "python bench/search_latency.py " + " ".join(sys.argv[1:]),
        "model": model_note,
        "fingerprint": fingerprint,
        "embed_dim": manifest["dim"],
        "items_per_modality": args.items,
        "index": {m: {k: c[k] for k in ("kind", "factory", "search_params", "recall_at_10")}
                  for m, c in manifest["collections"].items()},
        "index_build_seconds": build_seconds,  # None: reused from an earlier run
        "server_torch_threads": args.threads or max(1, (os.cpu_count() or 2) - 1),
        "server_peak_rss_mib": round(rss, 1),
        "runs": runs,
        "targets": TARGETS,
        "met": {
            "p50_ms_1_client": all(r["1 client"]["p50_ms"] <= TARGETS["p50_ms_1_client"] for r in runs.values()),
            "p99_ms_1_client": all(r["1 client"]["p99_ms"] <= TARGETS["p99_ms_1_client"] for r in runs.values()),
            "qps_32_clients": all(r[f"{args.clients} clients"]["qps"] >= TARGETS["qps_32_clients"]
                                  for r in runs.values()),
            "recall_at_10": all(c["recall_at_10"] >= TARGETS["recall_at_10"] for c in manifest["collections"].values()),
        },
        "note": "the load generator runs on the same cores as the server; a load average above the core count "
                "means other work was competing for them",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
