"""Search in every direction through the real app, checked against the index's own stored vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from service_testing import png_bytes

from retrieval.store import ItemStore


def _store(index: Path) -> ItemStore:
    return ItemStore(index / "items.sqlite")


def _first(store: ItemStore, modality: str) -> tuple[int, str | None, str | None]:
    item_id = int(store.ids(modality)[0])
    item = store.get([item_id])[item_id]
    return item_id, item.caption, item.uri


def test_text_to_image_returns_k_image_items_best_first(client):
    response = client.post("/v1/search", json={"text": "a red circle above a blue square", "target": "image", "k": 5})
    assert response.status_code == 200
    body = response.json()
    scores = [r["score"] for r in body["results"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {r["modality"] for r in body["results"]} == {"image"}
    assert body["took_ms"] > 0 and body["truncated"] is False


def test_text_to_text_finds_the_identical_caption_first(client, module_index):
    item_id, caption, _ = _first(_store(module_index), "text")
    top = client.post("/v1/search", json={"text": caption, "target": "text", "k": 3}).json()["results"][0]
    assert top["caption"] == caption and abs(top["score"] - 1.0) < 1e-4


def test_image_to_image_finds_the_same_file_first(client, module_index):
    item_id, _, uri = _first(_store(module_index), "image")
    encoded = base64.b64encode(Path(uri).read_bytes()).decode()
    top = client.post("/v1/search", json={"image_b64": encoded, "target": "image", "k": 3}).json()["results"][0]
    assert top["id"] == item_id and abs(top["score"] - 1.0) < 1e-4
    upload = client.post("/v1/search/image", files={"file": ("q.png", Path(uri).read_bytes(), "image/png")},
                         data={"target": "image", "k": "1"})
    assert upload.status_code == 200 and upload.json()["results"][0]["id"] == item_id


def test_image_to_text_returns_captions(client):
    response = client.post("/v1/search/image", files={"file": ("q.png", png_bytes(), "image/png")},
                           data={"target": "text", "k": "4"})
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 4
    assert all(r["modality"] == "text" and r["caption"] for r in results)


def test_search_by_embedding_equals_search_by_text(client):
    text = "two green triangles"
    vector = client.post("/v1/embed/text", json={"texts": [text]}).json()["embeddings"][0]
    by_text = client.post("/v1/search", json={"text": text, "k": 5}).json()["results"]
    scaled = [3.0 * v for v in vector]  # raw embeddings are normalised by the server
    by_vector = client.post("/v1/search", json={"embedding": scaled, "k": 5}).json()["results"]
    assert [r["id"] for r in by_vector] == [r["id"] for r in by_text]
    np.testing.assert_allclose([r["score"] for r in by_vector], [r["score"] for r in by_text], atol=1e-5)


def test_scores_are_the_cosine_with_the_stored_vectors(client, module_index):
    store = _store(module_index)
    query = np.asarray(client.post("/v1/embed/text", json={"texts": ["a big yellow star"]}).json()["embeddings"][0])
    results = client.post("/v1/search", json={"embedding": query.tolist(), "target": "image", "k": 10}).json()["results"]
    vectors = store.embeddings_of([r["id"] for r in results])
    np.testing.assert_allclose(vectors @ query, [r["score"] for r in results], atol=1e-5)
    everything = np.concatenate([v for _, v in store.iter_embeddings("image")]) @ query
    np.testing.assert_allclose(sorted(everything, reverse=True)[:10], [r["score"] for r in results], atol=1e-5)


def test_dataset_captions_name_their_image(client, module_index):
    store = _store(module_index)
    result = client.post("/v1/search", json={"text": "a shape", "target": "text", "k": 1}).json()["results"][0]
    image_id = result["metadata"]["image_id"]
    image = store.get([image_id])[image_id]
    assert image.modality == "image" and result["caption"] in image.metadata["captions"]


def test_info_reports_model_and_index_sizes(client, module_index):
    info = client.get("/v1/info").json()
    manifest = json.loads((module_index / "manifest.json").read_text())
    assert info["model"] == manifest["fingerprint"] and info["dim"] == 32
    assert info["indexes"]["image"]["count"] == 30 and info["indexes"]["text"]["count"] >= 150
    assert info["indexes"]["image"]["kind"] == "flat" and info["auth"] == {"writes": True, "reads": False}
