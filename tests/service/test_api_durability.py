"""kill -9 in the middle of a stream of adds (single texts and images, or bulk precomputed embeddings) loses no
acknowledged item and leaves nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_testing import API_KEY, AUTH, free_port, png_bytes, wait_until

from retrieval.index import read_index
from retrieval.index.factory import index_ids
from retrieval.store import ItemStore


def _start(index_dir: Path, checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "retrieval", "serve", "--index", str(index_dir), "--checkpoint", str(checkpoint),
         "--port", str(port), "--snapshot-interval-s", "0.05"],
        env={**os.environ, "RETRIEVAL_API_KEY": API_KEY},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, f"server exited: {log.read_text()[-2000:]}"
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:  # not listening yet
            return False

    try:
        wait_until(ready, 180, "the server to be ready")
    except BaseException:
        process.kill()
        raise
    return process, url


def _stream(url: str, acked: dict[int, tuple[str, object]], stop: threading.Event) -> None:
    """Add items one request at a time, recording every acknowledged id, until the server dies."""
    n = 0
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        while not stop.is_set():
            n += 1
            try:
                if n % 4 == 0:
                    data = png_bytes(((37 * n) % 256, (91 * n) % 256, (53 * n) % 256), (20 + n % 7, 20))
                    response = http.post("/v1/items", files={"files": (f"{n}.png", data, "image/png")})
                    payload: object = data
                    kind = "image"
                else:
                    payload = f"streamed item {n} of the durability test"
                    response = http.post("/v1/items", json={"texts": [payload]})
                    kind = "text"
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked[response.json()["ids"][0]] = (kind, payload)


def _check_acknowledged(url: str, acked: dict[int, tuple[str, object]]) -> None:
    """Every item `_stream` saw acknowledged is there as sent, and a search for it finds it."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for item_id, (kind, payload) in acked.items():
            item = http.get(f"/v1/items/{item_id}").json()
            assert item["modality"] == kind, (item_id, item)
            if kind == "text":
                assert item["caption"] == payload
                found = http.post("/v1/search", json={"text": payload, "target": "text", "k": 5}).json()
            else:
                assert http.get(f"/v1/items/{item_id}/image").content == payload
                found = http.post("/v1/search/image", files={"file": ("q.png", payload, "image/png")},
                                  data={"k": "5"}).json()
            assert item_id in [r["id"] for r in found["results"]], (item_id, kind)


def kill_9_mid_stream(index_dir: Path, checkpoint: Path, log: Path) -> None:
    """Serve the index, kill -9 the server in the middle of a stream of adds, start it again and check that every
    acknowledged item is there; the server is stopped gracefully at the end."""
    process, url = _start(index_dir, checkpoint, log)
    acked: dict[int, tuple[str, object]] = {}
    stop = threading.Event()
    writer = threading.Thread(target=_stream, args=(url, acked, stop))
    writer.start()
    wait_until(lambda: len(acked) >= 40, 120, "40 acknowledged adds")
    os.kill(process.pid, signal.SIGKILL)  # mid-stream: requests (and snapshots) are in flight
    process.wait(10)
    stop.set()
    writer.join(30)

    process, url = _start(index_dir, checkpoint, log)
    try:
        _check_acknowledged(url, acked)
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: writes the final snapshot
        process.wait(60)


def _bulk_stream(url: str, acked: dict[int, tuple[str, list[float]]], stop: threading.Event, seed: int) -> None:
    """Add 200 items with precomputed embeddings per request (images and texts mixed), recording every
    acknowledged id with its caption and embedding, until the server dies."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        while not stop.is_set():
            vectors = rng.standard_normal((200, 32))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            captions = [f"bulk {seed}-{rng.integers(1 << 40)}" for _ in vectors]
            items = [{"modality": "image", "caption": c, "uri": f"s3://bucket/{c}.jpg", "embedding": v.tolist()}
                     if k % 2 else {"text": c, "embedding": v.tolist()}
                     for k, (c, v) in enumerate(zip(captions, vectors, strict=True))]
            try:
                response = http.post("/v1/items", json={"items": items})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                for item, item_id in zip(items, response.json()["ids"], strict=True):
                    acked[item_id] = (item.get("text", item.get("caption")), item["embedding"])


@pytest.mark.slow  # two server processes start (torch + model import): ~60 s on 2 busy cores
def test_kill_9_right_after_bulk_embedding_adds_loses_no_acknowledged_item(index_dir, checkpoint, tmp_path):
    log = tmp_path / "server.log"
    process, url = _start(index_dir, checkpoint, log)
    acked: dict[int, tuple[str, list[float]]] = {}
    stop = threading.Event()
    writers = [threading.Thread(target=_bulk_stream, args=(url, acked, stop, seed)) for seed in range(3)]
    for writer in writers:
        writer.start()
    wait_until(lambda: len(acked) >= 2000, 120, "2,000 acknowledged bulk adds")
    os.kill(process.pid, signal.SIGKILL)  # other bulk requests (and snapshots) are in flight
    process.wait(10)
    stop.set()
    for writer in writers:
        writer.join(30)

    process, url = _start(index_dir, checkpoint, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            listed = {}
            for modality in ("image", "text"):
                offset = 0
                while page := http.get("/v1/items", params={"modality": modality, "offset": offset,
                                                            "limit": 1000}).json()["items"]:
                    listed.update((item["id"], item) for item in page)
                    offset += len(page)
            for item_id, (caption, _) in acked.items():
                assert listed[item_id]["caption"] == caption, item_id
            for item_id, (_, vector) in list(acked.items())[::50]:  # a sample: each found as its own nearest
                target = listed[item_id]["modality"]
                top = http.post("/v1/search", json={"embedding": vector, "target": target, "k": 1}).json()["results"]
                assert top[0]["id"] == item_id
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    store = ItemStore(index_dir / "items.sqlite")
    assert store.integrity_ok()
    stored = store.embeddings_of(list(acked))
    np.testing.assert_allclose(stored, np.array([v for _, v in acked.values()]), atol=1e-6)
    for modality in ("image", "text"):
        held = np.sort(index_ids(read_index(index_dir / f"{modality}.faiss")))
        np.testing.assert_array_equal(held, store.ids(modality))


@pytest.mark.slow  # two server processes start (torch + model import): ~50 s on 2 busy cores
def test_kill_9_during_adds_loses_no_acknowledged_item(index_dir, checkpoint, tmp_path):
    kill_9_mid_stream(index_dir, checkpoint, tmp_path / "server.log")

    store = ItemStore(index_dir / "items.sqlite")
    assert store.integrity_ok()
    for modality in ("image", "text"):
        held = np.sort(index_ids(read_index(index_dir / f"{modality}.faiss")))
        np.testing.assert_array_equal(held, store.ids(modality))  # every stored item indexed, nothing extra
    assert not list(index_dir.glob(".*.tmp")) and not list((index_dir / "images").glob(".*.tmp"))
