"""POST /v1/items with precomputed embeddings (the `items` form): stored without encoding, checked like a
search's embedding, all or nothing per request, within the item and body limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, make_settings

from service.app import create_app

DIM = 32  # the tiny test model's


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def no_encoding(client, monkeypatch):
    """Fail any request that reaches the text or image encoder."""

    async def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran for items sent with embeddings")

    engine = client.app.state.engine
    monkeypatch.setattr(engine.text_batcher, "submit", refuse)
    monkeypatch.setattr(engine.image_batcher, "submit", refuse)


def test_items_with_embeddings_are_stored_as_sent_without_encoding(client, no_encoding):
    vectors = _unit(np.random.default_rng(0), 3)
    body = {"items": [
        {"text": "a precomputed caption", "embedding": (3 * vectors[0]).tolist(), "metadata": {"src": "laion"}},
        {"modality": "image", "uri": "https://example.com/cat.jpg", "caption": "a cat",
         "embedding": vectors[1].tolist(), "metadata": {"w": 640}},
        {"modality": "image", "embedding": [int(v * 1000) for v in vectors[2]]},  # integers are numbers too
    ]}
    added = client.post("/v1/items", json=body, headers=AUTH)
    assert added.status_code == 200, added.text
    ids, truncated = added.json()["ids"], added.json()["truncated"]
    assert len(ids) == 3 and truncated == [False, False, False]
    text = client.get(f"/v1/items/{ids[0]}").json()
    assert (text["modality"], text["caption"], text["metadata"]) == ("text", "a precomputed caption", {"src": "laion"})
    image = client.get(f"/v1/items/{ids[1]}").json()
    assert (image["modality"], image["caption"], image["uri"]) == ("image", "a cat", "https://example.com/cat.jpg")
    assert client.get(f"/v1/items/{ids[1]}/image").status_code == 404  # a URL is never served as a file
    stored = client.app.state.engine.index.store.embeddings_of(ids)
    np.testing.assert_allclose(stored[:2], vectors[:2], atol=1e-6)  # normalised (the first was sent scaled ×3)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)
    for item_id, target, vector in zip(ids, ("text", "image", "image"), stored, strict=True):
        top = client.post("/v1/search", json={"embedding": vector.tolist(), "target": target, "k": 1}).json()
        assert top["results"][0]["id"] == item_id and top["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_items_without_an_embedding_are_encoded_like_texts(client):
    vector = _unit(np.random.default_rng(1), 1)[0]
    body = {"items": [{"text": "encoded here " * 40}, {"text": "given", "embedding": vector.tolist()}]}
    added = client.post("/v1/items", json=body, headers=AUTH).json()
    assert added["truncated"] == [True, False]  # the long text was cut to the context length for encoding
    encoded = client.post("/v1/embed/text", json={"texts": ["encoded here " * 40]}).json()["embeddings"][0]
    stored = client.app.state.engine.index.store.embeddings_of(added["ids"])
    np.testing.assert_allclose(stored[0], encoded, atol=1e-5)
    np.testing.assert_allclose(stored[1], vector, atol=1e-6)


def test_bad_embeddings_name_each_item_and_add_nothing(client):
    before = client.get("/v1/items").json()["total"]
    good = _unit(np.random.default_rng(2), 1)[0].tolist()
    items = [
        json.dumps({"text": "fine", "embedding": good}),
        json.dumps({"text": "short", "embedding": good[:-1]}),
        json.dumps({"modality": "image", "embedding": good + [0.5]}),
        '{"text": "nan", "embedding": [NaN' + ", 0.1" * (DIM - 1) + "]}",
        '{"text": "inf", "embedding": [1e999' + ", 0.1" * (DIM - 1) + "]}",
        json.dumps({"text": "zero", "embedding": [0.0] * DIM}),
    ]
    refused = client.post("/v1/items", content=('{"items": [' + ", ".join(items) + "]}").encode(),
                          headers={**AUTH, "content-type": "application/json"})
    assert refused.status_code == 422, refused.text
    errors = refused.json()["errors"]
    assert [e["field"] for e in errors] == [f"items[{k}].embedding" for k in (1, 2, 3, 4, 5)]
    assert [e["detail"] for e in errors] == [
        f"embedding has {DIM - 1} values; this index needs {DIM}", f"embedding has {DIM + 1} values; this index needs {DIM}",
        "embedding contains NaN or infinite values", "embedding contains NaN or infinite values",
        "embedding is the zero vector"]
    detail = refused.json()["detail"]
    assert detail.startswith("5 invalid item(s), nothing was added") and "items[1].embedding" in detail
    assert client.get("/v1/items").json()["total"] == before


@pytest.mark.parametrize(("body", "words"), [
    ({"items": [{"modality": "image", "caption": "no vector"}]}, "needs its `embedding`"),
    ({"items": [{"modality": "image", "text": "x", "embedding": [1.0] * DIM}]}, "has no `text`"),
    ({"items": [{"text": "x", "uri": "https://a/b.jpg"}]}, "are for image items"),
    ({"items": [{"embedding": [1.0] * DIM}]}, "needs `text`"),
    ({"items": [{"modality": "image", "uri": "/etc/passwd", "embedding": [1.0] * DIM}]}, "items[0].uri"),
    ({"items": [{"text": "x", "embedding": ["0.1"] * DIM}]}, "items[0].embedding[0]"),
    ({"items": [{"text": "x"}], "texts": ["y"]}, "not both"),
    ({"items": [{"text": "x"}], "metadata": [{}]}, "goes with `texts`"),
    ({"items": []}, "items"),
])
def test_malformed_items_are_refused(client, body, words):
    refused = client.post("/v1/items", json=body, headers=AUTH)
    assert refused.status_code == 422 and words in refused.json()["detail"], refused.text


def test_item_and_body_limits_hold_for_embeddings(index_dir, checkpoint):
    vectors = _unit(np.random.default_rng(3), 4).tolist()
    items = [{"text": f"t{k}", "embedding": v} for k, v in enumerate(vectors)]
    small = [{"text": f"t{k}", "embedding": [round(x, 3) for x in v]} for k, v in enumerate(vectors)]
    assert len(json.dumps({"items": small})) < 2000 < len(json.dumps({"items": items[:3]}))
    settings = make_settings(index_dir, checkpoint, max_items_per_request=3, max_body_bytes=2000)
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v1/items", json={"items": items[:3]}, headers=AUTH)  # few items, too many bytes
        assert refused.status_code == 413 and "limit is 2000 bytes" in refused.json()["detail"]
        refused = client.post("/v1/items", json={"items": small}, headers=AUTH)
        assert refused.status_code == 422 and "4 items in one request; the limit is 3" in refused.json()["detail"]
        assert client.post("/v1/items", json={"items": small[:3]}, headers=AUTH).status_code == 200
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/v1/items"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["items"]["maxItems"] == 3
        embedding = schema["components"]["schemas"]["NewItemBody"]["properties"]["embedding"]
        assert embedding["minItems"] == embedding["maxItems"] == DIM
        assert "must come from the served model" in embedding["description"]
