"""Prometheus metrics (prometheus-client), one registry per app: requests, latency, batching, index size.

`MetricsMiddleware` is a plain ASGI middleware: it labels each request with its route template
(`/v1/items/{item_id}`, not the raw path, so label cardinality stays bounded), counts the requests in
flight (the batchers use that to decide whether waiting for more work is worthwhile) and observes the
latency of every response, including the ones other middleware answers (413) or that fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
# Requests whose handlers submit encode work (in-flight counts feed the batchers' waiting decision).
ENCODING_PREFIXES = ("/v1/search", "/v1/embed", "/knn-service", "/v1/items")


class Metrics:
    """The service's collectors, registered in their own registry (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retrieval_http_requests", "HTTP requests by route, method and status", ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "retrieval_http_request_seconds", "HTTP request latency by route", ("route",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "retrieval_encode_batch_size", "items per encoder forward pass", ("batcher",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.queue_depth = Gauge(
            "retrieval_encode_queue_depth", "encode items waiting for a forward pass", ("batcher",),
            registry=self.registry,
        )
        self.index_items = Gauge(
            "retrieval_index_items", "live items per index", ("modality",), registry=self.registry
        )
        self.inflight = Gauge(
            "retrieval_http_requests_in_flight", "requests being handled", registry=self.registry
        )
        self.encoding_inflight = 0

    def observe_batch(self, batcher: str, size: int) -> None:
        """Called by a batcher for each forward pass."""
        self.batch_size.labels(batcher).observe(size)

    def track(self, name: str, depth: Callable[[], float]) -> None:
        """Report a batcher's queue depth at scrape time."""
        self.queue_depth.labels(name).set_function(depth)

    def track_index(self, counts: Callable[[], dict[str, int]]) -> None:
        """Report index sizes at scrape time."""
        for modality in ("image", "text"):
            self.index_items.labels(modality).set_function(lambda m=modality: counts().get(m, 0))


class MetricsMiddleware:
    """Count, time and label every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        encoding = scope["path"].startswith(ENCODING_PREFIXES)

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        self.metrics.encoding_inflight += encoding
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.encoding_inflight -= encoding
            self.metrics.inflight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
