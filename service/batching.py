"""Dynamic batching: encode work from concurrent requests is gathered into one forward pass.

Each request puts its items (texts, or preprocessed images) on a bounded queue and awaits their rows.
One collector task per batcher takes up to `max_batch` items and runs the model on them in the shared
single worker thread, so the event loop never blocks and batches never compete for the cores. While
that pass runs, new items queue up and form the next batch by themselves; the collector additionally
lingers up to `max_wait_ms` for more only when other requests are in flight that may still submit —
a lone client pays no waiting. A full queue is refused at once (`QueueFull` → 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue cannot take the request's items now."""


class Batcher:
    """Batches calls of `fn(items) -> (len(items), D) array`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[list[Any]], np.ndarray],
        executor: Executor,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        inflight: Callable[[], int] = lambda: 0,
        on_batch: Callable[[str, int], None] = lambda name, size: None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._queue_size = queue_size
        self._inflight = inflight
        self._on_batch = on_batch
        self._pending: deque[tuple[Any, asyncio.Future, int]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._request_ids = itertools.count()

    @property
    def depth(self) -> int:
        """Items waiting for a forward pass."""
        return len(self._pending)

    def start(self) -> None:
        """Start the collector task (inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop collecting; pending requests fail."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            _, future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(QueueFull("the service is shutting down"))

    async def submit(self, items: Sequence[Any]) -> np.ndarray:
        """Queue `items` and wait for their (len(items), D) rows."""
        if self._task is None or self._task.done():
            raise QueueFull("the encoder is not running")
        if len(self._pending) + len(items) > self._queue_size:
            raise QueueFull(f"{self.name} queue is full ({len(self._pending)} items waiting)")
        loop = asyncio.get_running_loop()
        request = next(self._request_ids)
        futures = [loop.create_future() for _ in items]
        self._pending.extend((item, future, request) for item, future in zip(items, futures, strict=True))
        self._wakeup.set()
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()  # a cancelled client's items are skipped by the collector
            raise
        return np.stack(rows)

    def _others_coming(self) -> bool:
        """Are more requests in flight than those already queued (so waiting may fill the batch)?"""
        queued = len({request for _, _, request in self._pending})
        return self._inflight() > queued

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            deadline = loop.time() + self._max_wait
            while len(self._pending) < self._max_batch and self._others_coming():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._wakeup.clear()
            batch = []
            while self._pending and len(batch) < self._max_batch:
                entry = self._pending.popleft()
                if not entry[1].cancelled():
                    batch.append(entry)
            if self._pending:
                self._wakeup.set()  # leftovers form the next batch straight away
            if batch:
                await self._dispatch(loop, batch)

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, asyncio.Future, int]]) -> None:
        self._on_batch(self.name, len(batch))
        try:
            rows = await loop.run_in_executor(self._executor, self._fn, [item for item, _, _ in batch])
        except Exception as err:  # the model failed on this batch: its requests fail, the service lives on
            log.exception("%s batch of %d failed", self.name, len(batch))
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future, _), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)
