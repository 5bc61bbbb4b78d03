"""Mixed load on the HTTP service: searches from many clients while others add and delete items, then ten
times that load, when the server must shed what it cannot admit (503 + Retry-After) and keep the latency of
what it admits, and its memory, bounded.

Set-up as in bench/search_latency.py (its model, index and server helpers): a real `retrieval serve` process
over an index of N synthetic items per modality, here with writes enabled (an API key) and the server's
in-flight limit (`--max-inflight`, RETRIEVAL_MAX_INFLIGHT). Phase 1: `--searchers` clients sending text→image
searches and `--writers` clients each adding a text item and deleting it again, for `--seconds`; phase 2: ten
times as many of both, for as long. Reported per phase and route: requests, p50/p99 latency of admitted
(2xx) requests, shed requests (503 with Retry-After), other errors; and the server's peak RSS after each phase.

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/mixed_load.py [--items 100000] [--seconds 60]
Writes bench/results/mixed_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from search_latency import build_bench_index, free_port, peak_rss_mb, pick_model, queries, synth_dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "mixed_load.json"
KEY = "mixed-load-bench-key"


async def call(conn, method: str, path: str, body: bytes = b"", auth: bool = False) -> tuple[int, bytes, bool]:
    """One request on a kept-alive connection: (status, body, whether Retry-After was sent)."""
    reader, writer = conn
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {KEY}\r\n" if auth else "") + "\r\n")
    writer.write(head.encode() + body)
    header = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.startswith(b"content-length"))
    return int(header.split(b" ", 2)[1]), await reader.readexactly(length), b"\r\nretry-after:" in header


async def phase(port: int, searchers: int, writers: int, seconds: float, bodies: list[bytes]) -> dict:
    """Run the mixed load; per route: latencies of admitted requests, shed and failed counts."""
    stats: dict[str, dict] = defaultdict(lambda: {"latencies": [], "shed": 0, "shed_without_retry_after": 0, "errors": 0})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def timed(conn, route: str, method: str, path: str, body: bytes = b"", auth: bool = False) -> bytes | None:
        start = loop.time()
        status, payload, retry_after = await call(conn, method, path, body, auth)
        entry = stats[route]
        if 200 <= status < 300:
            entry["latencies"].append((loop.time() - start) * 1000)
            return payload
        if status == 503:
            entry["shed"] += 1
            entry["shed_without_retry_after"] += not retry_after
            await asyncio.sleep(0.05)  # a polite client backs off a little before retrying
        else:
            entry["errors"] += 1
        return None

    async def searcher(n: int) -> None:
        conn = await asyncio.open_connection("127.0.0.1", port)
        while loop.time() < deadline:
            await timed(conn, "POST /v1/search", "POST", "/v1/search", bodies[n % len(bodies)])
            n += searchers
        conn[1].close()

    async def writer(n: int) -> None:
        conn = await asyncio.open_connection("127.0.0.1", port)
        while loop.time() < deadline:
            body = json.dumps({"texts": [f"load item {n}"]}).encode()
            added = await timed(conn, "POST /v1/items", "POST", "/v1/items", body, auth=True)
            if added is not None:
                item = json.loads(added)["ids"][0]
                await timed(conn, "DELETE /v1/items/{id}", "DELETE", f"/v1/items/{item}", auth=True)
            n += writers
        conn[1].close()

    await asyncio.gather(*(searcher(i) for i in range(searchers)), *(writer(i) for i in range(writers)))
    out = {}
    for route, entry in sorted(stats.items()):
        values = np.asarray(entry.pop("latencies") or [np.nan])
        out[route] = {**entry, "admitted": int(np.isfinite(values).sum()),
                      "p50_ms": round(float(np.nanpercentile(values, 50)), 2),
                      "p99_ms": round(float(np.nanpercentile(values, 99)), 2)}
    return {"searchers": searchers, "writers": writers, "seconds": seconds, "routes": out}


async def _ready(port: int) -> bool:
    conn = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await call(conn, "GET", "/readyz"))[0] == 200
    finally:
        conn[1].close()


def start(index: Path, checkpoint: Path, max_inflight: int | None, log: Path) -> tuple[subprocess.Popen, int]:
    """`retrieval serve` with writes enabled (and the in-flight limit asked for); waits until it is ready."""
    port = free_port()
    env = {**os.environ, **({"RETRIEVAL_MAX_INFLIGHT": str(max_inflight)} if max_inflight else {})}
    process = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--index", str(index), "--checkpoint",
                                str(checkpoint), "--port", str(port), "--api-key", KEY],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if asyncio.run(_ready(port)):
                return process, port
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not start")


def model_and_index(checkpoint: str | None, workdir: str, items: int) -> tuple[Path, str, Path, Path]:
    """The served checkpoint, what it is, and an index of `items` synthetic items per modality of its own
    (this benchmark writes to it, so it is not the one bench/search_latency.py reuses), under `workdir`."""
    from retrieval.checkpoint import read_checkpoint

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    path, note = pick_model(checkpoint, work)
    index = work / f"index-{read_checkpoint(path)['fingerprint']}-{items}-mixed"
    build_bench_index(path, index, items)
    return path, note, index, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of picking one")
    parser.add_argument("--workdir", default="/tmp/retrieval-bench", help="cached model/index between runs")
    parser.add_argument("--items", type=int, default=100_000, help="indexed items per modality")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each phase")
    parser.add_argument("--searchers", type=int, default=16)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--max-inflight", type=int, help="the server's in-flight limit (default: its own)")
    args = parser.parse_args()
    checkpoint, model_note, index, work = model_and_index(args.checkpoint, args.workdir, args.items)
    captions, _ = queries(synth_dataset(work))
    bodies = [json.dumps({"text": c, "target": "image", "k": 10}).encode() for c in captions]
    process, port = start(index, checkpoint, args.max_inflight, work / "mixed-server.log")
    load = {"before": os.getloadavg()}
    phases = {}
    try:
        for name, scale in (("normal", 1), ("10x", 10)):
            phases[name] = asyncio.run(phase(port, args.searchers * scale, args.writers * scale, args.seconds, bodies))
            phases[name]["server_peak_rss_mib"] = round(peak_rss_mb(process.pid), 1)
        load["after"] = os.getloadavg()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    print(f"model: {model_note}; {args.items} items per modality")
    print(f"{'phase':<7} {'route':<22} {'admitted':>8} {'p50 ms':>8} {'p99 ms':>8} {'shed':>6} {'errors':>6} {'RSS MiB':>8}")
    for name, result in phases.items():
        for route, row in result["routes"].items():
            print(f"{name:<7} {route:<22} {row['admitted']:>8} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                  f"{row['shed']:>6} {row['errors']:>6} {result['server_peak_rss_mib']:>8.0f}")
    print(f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after, on {os.cpu_count()} cores")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/mixed_load.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "loadavg": {k: list(v) for k, v in load.items()}, "model": model_note, "items_per_modality": args.items,
        "phases": phases,
        "note": "the load generator runs on the same cores as the server",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
