"""Search options through the real app: paging, min_score, "more like this" by item id, combined text + image
queries, batch search — each checked against the stored vectors or the single-query routes."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from service_testing import BOTH_BACKENDS, png_bytes

from retrieval.store import ItemStore

pytestmark = BOTH_BACKENDS  # every test here, over FAISS and over Milvus Lite


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def _embed_text(client, text: str) -> np.ndarray:
    return np.asarray(client.post("/v1/embed/text", json={"texts": [text]}).json()["embeddings"][0])


def test_pages_tile_the_ranking_without_overlap(client):
    whole = _ids(client.post("/v1/search", json={"text": "a blue square", "target": "text", "k": 30}))
    pages = [_ids(client.post("/v1/search", json={"text": "a blue square", "target": "text", "k": 7, "offset": o}))
             for o in range(0, 28, 7)]
    assert sum(pages, []) == whole[:28]
    again = _ids(client.post("/v1/search", json={"text": "a blue square", "target": "text", "k": 7, "offset": 7}))
    assert again == pages[1]  # stable order
    beyond = client.post("/v1/search", json={"text": "x", "k": 5, "offset": 10_000})
    assert beyond.status_code == 200 and beyond.json()["results"] == []
    assert client.post("/v1/search", json={"text": "x", "offset": 10_001}).status_code == 422
    assert client.post("/v1/search", json={"text": "x", "offset": -1}).status_code == 422


def test_min_score_drops_what_is_less_similar(client):
    everything = client.post("/v1/search", json={"text": "a green circle", "k": 30}).json()["results"]
    cut = everything[10]["score"]
    kept = client.post("/v1/search", json={"text": "a green circle", "k": 30, "min_score": cut}).json()["results"]
    assert kept == [r for r in everything if r["score"] >= cut] and len(kept) >= 11
    assert client.post("/v1/search", json={"text": "x", "min_score": 1.5}).status_code == 422


def test_more_like_this_ranks_by_the_items_own_vector_and_leaves_it_out(client, module_index):
    store = ItemStore(module_index / "items.sqlite")
    image_id = int(store.ids("image")[4])
    vector = store.embeddings_of([image_id])[0]
    by_id = client.post("/v1/search", json={"item_id": image_id, "k": 6}).json()["results"]
    by_vector = client.post("/v1/search", json={"embedding": vector.tolist(), "k": 7}).json()["results"]
    assert image_id not in [r["id"] for r in by_id]
    assert [r["id"] for r in by_id] == [r["id"] for r in by_vector if r["id"] != image_id][:6]
    captions = _ids(client.post("/v1/search", json={"item_id": image_id, "target": "text", "k": 5}))  # cross-modal
    assert captions == _ids(client.post("/v1/search", json={"embedding": vector.tolist(), "target": "text", "k": 5}))
    missing = client.post("/v1/search", json={"item_id": 987_654})
    assert missing.status_code == 404 and "no item" in missing.json()["detail"]


def test_combined_query_is_the_weighted_sum_of_normalised_embeddings(client):
    text, image = "a yellow triangle", png_bytes((230, 200, 20))
    encoded = base64.b64encode(image).decode()
    image_vector = np.asarray(client.post("/v1/embed/image", files={"files": ("q.png", image, "image/png")})
                              .json()["embeddings"][0])
    for weight in (0.0, 0.3, 1.0):
        mixed = weight * _embed_text(client, text) + (1 - weight) * image_vector
        combined = client.post("/v1/search", json={"text": text, "image_b64": encoded, "text_weight": weight, "k": 8})
        expected = client.post("/v1/search", json={"embedding": mixed.tolist(), "k": 8})
        assert _ids(combined) == _ids(expected)
        np.testing.assert_allclose([r["score"] for r in combined.json()["results"]],
                                   [r["score"] for r in expected.json()["results"]], atol=1e-5)
    upload = client.post("/v1/search/image", files={"file": ("q.png", image, "image/png")},
                         data={"text": text, "text_weight": "0.3", "k": "8"})
    assert _ids(upload) == _ids(client.post("/v1/search", json={"text": text, "image_b64": encoded,
                                                                 "text_weight": 0.3, "k": 8}))


def test_query_shapes_are_exactly_one(client):
    for body in ({"k": 3}, {"text": "a", "item_id": 1}, {"embedding": [0.1] * 32, "image_b64": "AA=="},
                 {"text": "a", "text_weight": 0.5}, {"text": None}, {"text": "a", "k": "3"}):
        response = client.post("/v1/search", json=body)
        assert response.status_code == 422, (body, response.text)


def test_batch_answers_each_query_in_order_like_single_searches(client, dataset: Path):
    picture = base64.b64encode(png_bytes((20, 20, 230))).decode()
    queries = [{"text": "two red squares", "k": 4}, {"image_b64": picture, "target": "text", "k": 3},
               {"item_id": 2, "k": 5, "offset": 1}, {"text": "a circle", "k": 2, "min_score": -1}]
    batch = client.post("/v1/search/batch", json={"queries": queries})
    assert batch.status_code == 200, batch.text
    singles = [_ids(client.post("/v1/search", json=q)) for q in queries]
    assert [[r["id"] for r in page] for page in batch.json()["results"]] == singles
    bad = client.post("/v1/search/batch", json={"queries": [{"text": "ok"}, {"item_id": 987_654}]})
    assert bad.status_code == 404 and bad.json()["detail"].startswith("queries[1]: ")
    invalid = client.post("/v1/search/batch", json={"queries": [{"text": "ok"}, {"text": "ok", "k": 0}]})
    assert invalid.status_code == 422 and "queries[1]" in invalid.json()["detail"]
    assert client.post("/v1/search/batch", json={"queries": []}).status_code == 422
