"""Dynamic batching: concurrent work shares forward passes, and every request gets its own rows back."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from service_testing import LiveServer, make_settings

from service.app import create_app
from service.batching import Batcher, QueueFull


def _run(coroutine):
    return asyncio.run(coroutine)


class Doubler:
    """A stand-in model: each item → a row [item, 2·item]; records the batch sizes it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, items: list[float]) -> np.ndarray:
        self.batches.append(len(items))
        return np.array([[x, 2 * x] for x in items], np.float32)


def test_concurrent_submissions_share_batches_and_keep_their_rows():
    model = Doubler()

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher("t", model, pool, max_batch=8, max_wait_ms=2, queue_size=64)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit([float(i), float(i) + 0.5]) for i in range(6)))
            await batcher.stop()
            return results

    results = _run(scenario())
    for i, rows in enumerate(results):
        np.testing.assert_array_equal(rows, [[i, 2 * i], [i + 0.5, 2 * i + 1]])
    assert sum(model.batches) == 12 and max(model.batches) == 8 and len(model.batches) == 2


def test_a_full_queue_refuses_at_once():
    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher("t", Doubler(), pool, max_batch=4, max_wait_ms=2, queue_size=3)
            batcher.start()
            with pytest.raises(QueueFull):
                await batcher.submit([1.0, 2.0, 3.0, 4.0])
            ok = await batcher.submit([1.0, 2.0, 3.0])
            await batcher.stop()
            return ok

    assert _run(scenario()).shape == (3, 2)


def test_a_lone_request_does_not_wait_for_company():
    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            # 5 s of allowed waiting, but only one request in flight (the one submitting): no reason to wait.
            batcher = Batcher("t", Doubler(), pool, max_batch=8, max_wait_ms=5000, queue_size=8, inflight=lambda: 1)
            batcher.start()
            start = time.perf_counter()
            await batcher.submit([1.0])
            elapsed = time.perf_counter() - start
            await batcher.stop()
            return elapsed

    assert _run(scenario()) < 2.5


def test_a_failing_batch_fails_its_requests_only():
    def flaky(items):
        if "boom" in items:
            raise RuntimeError("model failed")
        return np.ones((len(items), 2), np.float32)

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher("t", flaky, pool, max_batch=1, max_wait_ms=0, queue_size=8)
            batcher.start()
            with pytest.raises(RuntimeError):
                await batcher.submit(["boom"])
            ok = await batcher.submit(["fine"])
            await batcher.stop()
            return ok

    assert _run(scenario()).shape == (1, 2)


def test_concurrent_http_requests_get_the_same_embeddings_as_alone(index_dir, checkpoint):
    texts = [f"shape number {n} in colour {c}" for n, c in zip(range(24), ["red", "green", "blue"] * 8, strict=True)]
    app = create_app(make_settings(index_dir, checkpoint, batch_max_wait_ms=5))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        alone = np.array(http.post("/v1/embed/text", json={"texts": texts}).json()["embeddings"])

        def one(text: str) -> list[float]:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                return own.post("/v1/embed/text", json={"texts": [text]}).json()["embeddings"][0]

        with ThreadPoolExecutor(12) as pool:
            together = np.array(list(pool.map(one, texts)))
    np.testing.assert_allclose(together, alone, atol=1e-5)
