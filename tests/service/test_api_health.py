"""Probes, metrics, readiness before the lifespan runs, the web page route, shedding over the in-flight limit."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
from fastapi.testclient import TestClient
from service_testing import LiveServer, make_settings

from service.app import create_app


def test_not_ready_until_loaded(index_dir, checkpoint):
    app = create_app(make_settings(index_dir, checkpoint))
    bare = TestClient(app)  # not entered: the lifespan (model and index loading) has not run
    assert bare.get("/healthz").json() == {"status": "ok"}
    assert bare.get("/readyz").status_code == 503
    assert bare.post("/v1/search", json={"text": "x"}).status_code == 503
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200


def test_metrics_count_requests_batches_and_index_size(client):
    client.post("/v1/search", json={"text": "a red square", "k": 3})
    client.post("/v1/search", json={"text": "", "k": 3})
    text = client.get("/metrics").text
    assert 'retrieval_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'retrieval_http_requests_total{method="POST",route="/v1/search",status="422"}' in text
    assert 'retrieval_http_request_seconds_bucket{le="0.01",route="/v1/search"}' in text
    assert 'retrieval_encode_batch_size_count{batcher="text"}' in text
    assert 'retrieval_encode_queue_depth{batcher="image"} 0.0' in text
    assert 'retrieval_index_items{modality="image"} 30.0' in text


def test_openapi_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/healthz", "/readyz", "/metrics", "/v1/info", "/v1/embed/text", "/v1/embed/image", "/v1/search",
                 "/v1/search/image", "/v1/items", "/v1/items/{item_id}", "/v1/items/{item_id}/image",
                 "/knn-service", "/indices-list"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/items"]["post"]["requestBody"]["content"]


def test_web_page_route_serves_the_page_or_says_it_is_missing(client):
    from service.routes.web import STATIC

    response = client.get("/")
    if (STATIC / "index.html").is_file():
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    else:
        assert response.status_code == 404 and "not installed" in response.json()["detail"]


def test_requests_over_the_inflight_limit_are_shed_with_retry_after(index_dir, checkpoint):
    """One request holds the only slot while its body streams in; the next is refused at once, probes still
    answer, and the slot is free again afterwards (its own index copy: the module's client writes the other)."""
    with LiveServer(create_app(make_settings(index_dir, checkpoint, max_inflight=1))) as live:
        started = threading.Event()

        def slow_body():
            yield b'{"texts": ["held'
            started.set()
            time.sleep(1.5)
            yield b' open"]}'

        def hold():
            return httpx.post(f"{live.url}/v1/embed/text", content=slow_body(),
                              headers={"content-type": "application/json"}, timeout=30)

        holder = concurrent.futures.ThreadPoolExecutor(1).submit(hold)
        started.wait(10)
        time.sleep(0.2)
        shed = httpx.post(f"{live.url}/v1/search", json={"text": "x"}, timeout=10)
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and "overloaded" in shed.json()["detail"]
        assert httpx.get(f"{live.url}/healthz", timeout=10).status_code == 200
        assert holder.result(30).status_code == 200
        assert httpx.post(f"{live.url}/v1/search", json={"text": "x"}, timeout=10).status_code == 200
