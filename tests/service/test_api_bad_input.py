"""Every kind of bad input gets a 4xx with a message, and the service stays healthy afterwards."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_testing import AUTH, make_settings, png_bytes, png_header_only

from service.app import create_app

MAX_PIXELS = 200 * 200


@pytest.fixture(scope="module")
def strict(module_index, checkpoint):
    """An app with small limits, so that the limits are cheap to exceed."""
    settings = make_settings(module_index, checkpoint, max_body_bytes=200_000, max_image_pixels=MAX_PIXELS,
                             max_texts=4, max_k=50, queue_size=3)
    with TestClient(create_app(settings)) as client:
        yield client


def _upload(client, data: bytes, name: str = "x.png"):
    """The three routes that take image uploads."""
    return [
        client.post("/v1/embed/image", files={"files": (name, data, "image/png")}),
        client.post("/v1/search/image", files={"file": (name, data, "image/png")}),
        client.post("/v1/items", files={"files": (name, data, "image/png")}, headers=AUTH),
    ]


def _expect(responses, status: int, words: str) -> None:
    for response in responses if isinstance(responses, list) else [responses]:
        assert response.status_code == status, (response.status_code, response.text)
        assert words in response.json()["detail"].lower(), response.json()


@pytest.fixture(autouse=True)
def stays_healthy(strict):
    yield
    assert strict.get("/healthz").status_code == 200
    assert strict.post("/v1/search", json={"text": "still fine", "k": 1}).status_code == 200


def test_non_image_bytes(strict):
    _expect(_upload(strict, b"this is plain text, not a picture"), 415, "not an image")


def test_truncated_image(strict):
    data = png_bytes(size=(64, 64))
    _expect(_upload(strict, data[: len(data) // 2]), 400, "truncated")


def test_empty_file(strict):
    _expect(_upload(strict, b""), 400, "empty file")


def test_decompression_bomb_rejected_from_the_header(strict):
    _expect(_upload(strict, png_header_only(100_000, 100_000)), 413, "pixels")
    _expect(_upload(strict, png_bytes(size=(300, 300))), 413, "over the limit")


def test_unsupported_image_type(strict):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PPM")
    _expect(_upload(strict, buffer.getvalue()), 415, "unsupported image type ppm")


def test_bad_base64(strict):
    _expect(strict.post("/v1/search", json={"image_b64": "not base64!!"}), 400, "base64")
    _expect(strict.post("/knn-service", content=b'{"image": "%%%", "modality": "image"}'), 400, "base64")
    junk = base64.b64encode(b"no image here").decode()
    _expect(strict.post("/v1/search", json={"image_b64": junk}), 415, "not an image")


def test_empty_text(strict):
    _expect(strict.post("/v1/search", json={"text": "   "}), 422, "text: is empty")
    _expect(strict.post("/v1/embed/text", json={"texts": ["fine", ""]}), 422, "texts[1]: is empty")
    _expect(strict.post("/v1/items", json={"texts": [""]}, headers=AUTH), 422, "empty")
    _expect(strict.post("/knn-service", content=b'{"text": "  "}'), 422, "empty")


def test_long_text_is_truncated_and_reported(strict):
    long = " ".join(["word"] * 100)
    embedded = strict.post("/v1/embed/text", json={"texts": ["short", long]})
    assert embedded.status_code == 200 and embedded.json()["truncated"] == [False, True]
    searched = strict.post("/v1/search", json={"text": long, "k": 1})
    assert searched.status_code == 200 and searched.json()["truncated"] is True


def test_empty_or_oversized_batch(strict):
    _expect(strict.post("/v1/embed/text", json={"texts": []}), 422, "at least 1")
    _expect(strict.post("/v1/embed/text", json={"texts": ["a"] * 5}), 422, "limit is 4")
    files = [("files", (f"{n}.png", png_bytes(), "image/png")) for n in range(5)]
    _expect(strict.post("/v1/embed/image", files=files), 422, "the limit is 4")
    _expect(strict.post("/v1/embed/image", files={"other": ("a.png", png_bytes(), "image/png")}), 422, "unknown")
    _expect(strict.post("/v1/embed/image", data={"x": "1"}, files={}), 415, "multipart")


def test_k_out_of_range(strict):
    for k in (0, -3, 51):
        _expect(strict.post("/v1/search", json={"text": "x", "k": k}), 422, "k must be between 1 and 50")
    _expect(strict.post("/v1/search/image", files={"file": ("q.png", png_bytes(), "image/png")}, data={"k": "0"}),
            422, "k must be")
    _expect(strict.post("/knn-service", content=b'{"text": "x", "modality": "image", "num_images": 500}'),
            422, "k must be")


def test_bad_embeddings(strict):
    _expect(strict.post("/v1/search", json={"embedding": [0.1] * 31}), 422, "needs 32")
    nan = "[" + ", ".join(["NaN"] + ["0.1"] * 31) + "]"
    _expect(strict.post("/v1/search", content=f'{{"embedding": {nan}}}'.encode(),
                        headers={"content-type": "application/json"}), 422, "nan or infinite")
    inf = "[" + ", ".join(["1e999"] + ["0.1"] * 31) + "]"
    _expect(strict.post("/v1/search", content=f'{{"embedding": {inf}}}'.encode(),
                        headers={"content-type": "application/json"}), 422, "nan or infinite")
    _expect(strict.post("/v1/search", json={"embedding": [0.0] * 32}), 422, "zero vector")


def test_query_fields(strict):
    _expect(strict.post("/v1/search", json={"k": 3}), 422, "exactly one")
    _expect(strict.post("/v1/search", json={"text": "a", "embedding": [0.1] * 32}), 422, "exactly one")
    _expect(strict.post("/v1/search", json={"text": "a", "target": "video"}), 422, "target")
    _expect(strict.post("/v1/search", json={"text": "a", "colour": "red"}), 422, "colour")
    _expect(strict.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 422, "json")


def test_unknown_item_id(strict):
    _expect(strict.get("/v1/items/987654"), 404, "no item")
    _expect(strict.get("/v1/items/987654/image"), 404, "no item")
    _expect(strict.delete("/v1/items/987654", headers=AUTH), 404, "no item")
    assert strict.get("/v1/items/not-a-number").status_code == 422
    text_id = strict.post("/v1/items", json={"texts": ["no picture"]}, headers=AUTH).json()["ids"][0]
    _expect(strict.get(f"/v1/items/{text_id}/image"), 404, "no image file")


def test_missing_or_wrong_api_key(strict):
    _expect(strict.post("/v1/items", json={"texts": ["x"]}), 401, "missing api key")
    _expect(strict.delete("/v1/items/1", headers={"Authorization": "Bearer wrong"}), 401, "invalid api key")


def test_body_over_the_size_limit(strict):
    big = b"x" * 300_000
    _expect(strict.post("/v1/embed/image", files={"files": ("big.png", big, "image/png")}), 413, "too large")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(30):
            yield b"y" * 10_000

    _expect(strict.post("/v1/items", content=chunks(), headers={**AUTH, "content-type": "application/json"}),
            413, "too large")


def test_wrong_content_type_and_bad_bodies_for_items(strict):
    _expect(strict.post("/v1/items", content=b"texts", headers={**AUTH, "content-type": "text/plain"}), 415,
            "multipart")
    _expect(strict.post("/v1/items", content=b"{oops", headers={**AUTH, "content-type": "application/json"}), 400,
            "not valid json")
    _expect(strict.post("/v1/items", json={"texts": ["a", "b"], "metadata": [{}]}, headers=AUTH), 422, "metadata")
    files = {"files": ("a.png", png_bytes(), "image/png")}
    _expect(strict.post("/v1/items", files=files, data={"metadata": "[1, 2]"}, headers=AUTH), 422, "json object")
    _expect(strict.post("/v1/items", files=files, data={"captions": ["a", "b"]}, headers=AUTH), 422, "captions")


def test_clip_compat_bad_requests(strict):
    _expect(strict.post("/knn-service", content=b"not json"), 400, "not valid json")
    _expect(strict.post("/knn-service", content=b'{"text": "x", "indice_name": "laion5B"}'), 404, "unknown index")
    _expect(strict.post("/knn-service", content=b'{"image_url": "http://example.com/a.jpg"}'), 422, "image_url")
    _expect(strict.post("/knn-service", content=b'{"modality": "image"}'), 422, "give exactly one of")
    _expect(strict.post("/knn-service", content=b'{"text": "a", "embedding_input": [1]}'), 422, "exactly one")


def test_queue_full_is_503_with_retry_after(strict):
    assert strict.post("/v1/embed/text", json={"texts": ["a", "b", "c"]}).status_code == 200
    full = strict.post("/v1/embed/text", json={"texts": ["a", "b", "c", "d"]})  # more than the 3 queue slots
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert "queue is full" in full.json()["detail"]
