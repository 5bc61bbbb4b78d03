"""Adding, reading, serving and deleting items through the real app (auth required for writes)."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image
from service_testing import AUTH, make_settings, png_bytes

from service.app import create_app


def test_added_texts_are_searchable_and_deletable(client):
    texts = ["zebra quartz violin", "marmalade orbit"]
    added = client.post("/v1/items", json={"texts": texts, "metadata": [{"n": 1}, {"n": 2}]}, headers=AUTH)
    assert added.status_code == 200
    ids = added.json()["ids"]
    assert len(ids) == 2 and added.json()["truncated"] == [False, False]
    top = client.post("/v1/search", json={"text": texts[0], "target": "text", "k": 1}).json()["results"][0]
    assert top["id"] == ids[0] and top["metadata"] == {"n": 1}
    item = client.get(f"/v1/items/{ids[1]}").json()
    assert item["caption"] == texts[1] and item["modality"] == "text" and item["image_url"] is None

    assert client.delete(f"/v1/items/{ids[0]}", headers=AUTH).json() == {"deleted": ids[0]}
    assert client.get(f"/v1/items/{ids[0]}").status_code == 404
    found = client.post("/v1/search", json={"text": texts[0], "target": "text", "k": 50}).json()["results"]
    assert ids[0] not in [r["id"] for r in found]
    assert client.delete(f"/v1/items/{ids[0]}", headers=AUTH).status_code == 404


def test_added_images_are_stored_served_and_found(client):
    blue, green = png_bytes((10, 10, 240), (40, 30)), png_bytes((10, 240, 10), (30, 40), "JPEG")
    added = client.post(
        "/v1/items",
        files=[("files", ("blue.png", blue, "image/png")), ("files", ("green.jpg", green, "image/jpeg"))],
        data={"captions": ["a blue card", "a green card"], "metadata": json.dumps({"source": "test"})},
        headers=AUTH,
    )
    assert added.status_code == 200, added.text
    blue_id, green_id = added.json()["ids"]
    item = client.get(f"/v1/items/{green_id}").json()
    assert item["caption"] == "a green card" and item["metadata"] == {"filename": "green.jpg", "source": "test"}
    assert item["uri"].startswith("images/") and item["uri"].endswith(".jpg")
    served = client.get(f"/v1/items/{blue_id}/image")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png" and served.content == blue
    assert Image.open(io.BytesIO(served.content)).size == (40, 30)
    top = client.post("/v1/search/image", files={"file": ("q.png", blue, "image/png")}, data={"k": "1"}).json()
    assert top["results"][0]["id"] == blue_id


def test_counts_follow_adds_and_deletes(client):
    before = client.get("/v1/info").json()["indexes"]["text"]["count"]
    ids = client.post("/v1/items", json={"texts": ["one more"]}, headers=AUTH).json()["ids"]
    assert client.get("/v1/info").json()["indexes"]["text"]["count"] == before + 1
    client.delete(f"/v1/items/{ids[0]}", headers=AUTH)
    assert client.get("/v1/info").json()["indexes"]["text"]["count"] == before


def test_writes_need_the_key(client):
    assert client.post("/v1/items", json={"texts": ["x"]}).status_code == 401
    wrong = client.post("/v1/items", json={"texts": ["x"]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.delete("/v1/items/1", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/v1/search", json={"text": "x"}).status_code == 200  # reads are open by default


def test_writes_are_refused_without_a_configured_key(index_dir, checkpoint):
    with TestClient(create_app(make_settings(index_dir, checkpoint, api_key=None))) as client:
        response = client.post("/v1/items", json={"texts": ["x"]}, headers=AUTH)
        assert response.status_code == 403 and "api-key" in response.json()["detail"]


def test_auth_reads_protects_searches(index_dir, checkpoint):
    with TestClient(create_app(make_settings(index_dir, checkpoint, auth_reads=True))) as client:
        assert client.post("/v1/search", json={"text": "x"}).status_code == 401
        assert client.get("/v1/info").status_code == 401
        assert client.post("/v1/search", json={"text": "x"}, headers=AUTH).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_items_persist_across_restarts(index_dir, checkpoint):
    settings = make_settings(index_dir, checkpoint)
    with TestClient(create_app(settings)) as client:
        ids = client.post("/v1/items", json={"texts": ["persistent penguin"]}, headers=AUTH).json()["ids"]
        removed = client.post("/v1/items", json={"texts": ["short-lived"]}, headers=AUTH).json()["ids"]
        client.delete(f"/v1/items/{removed[0]}", headers=AUTH)
    with TestClient(create_app(settings)) as client:
        top = client.post("/v1/search", json={"text": "persistent penguin", "target": "text", "k": 1}).json()
        assert top["results"][0]["id"] == ids[0]
        assert client.get(f"/v1/items/{removed[0]}").status_code == 404
