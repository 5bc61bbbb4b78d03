"""Adding, reading, serving and deleting items through the real app (auth required for writes)."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image
from service_testing import AUTH, BOTH_BACKENDS, make_settings, png_bytes

from service.app import create_app


@BOTH_BACKENDS
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


@BOTH_BACKENDS
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


@BOTH_BACKENDS
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


@BOTH_BACKENDS
def test_listing_pages_through_items_in_id_order(client):
    everything = client.get("/v1/items", params={"modality": "image", "limit": 1000}).json()
    ids = [item["id"] for item in everything["items"]]
    assert everything["total"] == len(ids) >= 30 and ids == sorted(ids)
    page = client.get("/v1/items", params={"modality": "image", "offset": 5, "limit": 5}).json()
    assert [item["id"] for item in page["items"]] == ids[5:10] and page["total"] == everything["total"]
    assert page["items"][0]["image_url"].endswith(f"/v1/items/{ids[5]}/image")
    both = client.get("/v1/items", params={"limit": 1}).json()
    assert both["total"] == everything["total"] + client.get("/v1/items", params={"modality": "text"}).json()["total"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"modality": "video"}, {"filter": "{oops"}):
        assert client.get("/v1/items", params=bad).status_code == 422, bad


@BOTH_BACKENDS
def test_listing_filters_by_metadata(client):
    ids = client.post("/v1/items", json={"texts": ["listed one", "listed two", "listed three"],
                                          "metadata": [{"shelf": 1}, {"shelf": 2}, {"shelf": 3, "tags": ["x"]}]},
                      headers=AUTH).json()["ids"]
    found = client.get("/v1/items", params={"filter": json.dumps({"shelf": {"gte": 2}})}).json()
    assert [item["id"] for item in found["items"]] == ids[1:] and found["total"] == 2
    second = client.get("/v1/items", params={"filter": json.dumps({"shelf": {"gte": 1}}), "offset": 1, "limit": 1})
    assert [item["id"] for item in second.json()["items"]] == [ids[1]]
    tagged = client.get("/v1/items", params={"modality": "text", "filter": json.dumps({"tags": "x"})}).json()
    assert [item["id"] for item in tagged["items"]] == [ids[2]]
    assert client.get("/v1/items", params={"modality": "image", "filter": json.dumps({"tags": "x"})}).json()["total"] == 0


@BOTH_BACKENDS
def test_patch_merges_metadata_and_null_removes_a_key(client):
    item_id = client.post("/v1/items", json={"texts": ["patch me"], "metadata": [{"a": 1, "b": 2}]},
                          headers=AUTH).json()["ids"][0]
    patched = client.patch(f"/v1/items/{item_id}", json={"metadata": {"b": None, "c": {"d": [1, 2]}}}, headers=AUTH)
    assert patched.status_code == 200 and patched.json()["metadata"] == {"a": 1, "c": {"d": [1, 2]}}
    assert client.get(f"/v1/items/{item_id}").json()["metadata"] == {"a": 1, "c": {"d": [1, 2]}}
    assert client.patch(f"/v1/items/{item_id}", json={"metadata": {"a": 5}}).status_code == 401
    assert client.patch("/v1/items/987654", json={"metadata": {}}, headers=AUTH).status_code == 404
    assert client.patch(f"/v1/items/{item_id}", json={"metadata": [1]}, headers=AUTH).status_code == 422
    assert client.patch(f"/v1/items/{item_id}", json={}, headers=AUTH).status_code == 422


@BOTH_BACKENDS
def test_a_bulk_add_with_bad_items_lists_each_and_adds_none(client):
    before = client.get("/v1/items").json()["total"]
    texts = client.post("/v1/items", json={"texts": ["fine", " ", "also fine", ""]}, headers=AUTH)
    assert texts.status_code == 422
    assert [e["field"] for e in texts.json()["errors"]] == ["texts[1]", "texts[3]"]
    files = [("files", ("a.png", png_bytes(), "image/png")), ("files", ("b.txt", b"not an image", "text/plain")),
             ("files", ("c.png", png_bytes(size=(64, 64))[:60], "image/png"))]
    images = client.post("/v1/items", files=files, headers=AUTH)
    assert images.status_code == 422, images.text
    errors = images.json()["errors"]
    assert [e["field"] for e in errors] == ["files[1]", "files[2]"] and "not an image" in errors[0]["detail"]
    assert "nothing was added" in images.json()["detail"]
    assert client.get("/v1/items").json()["total"] == before


def test_items_per_request_are_limited(index_dir, checkpoint):
    with TestClient(create_app(make_settings(index_dir, checkpoint, max_items_per_request=3))) as client:
        refused = client.post("/v1/items", json={"texts": ["a", "b", "c", "d"]}, headers=AUTH)
        assert refused.status_code == 422 and "limit is 3" in refused.json()["detail"]
        assert client.post("/v1/items", json={"texts": ["a", "b", "c"]}, headers=AUTH).status_code == 200
        body = client.get("/openapi.json").json()["paths"]["/v1/items"]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"]["properties"]["texts"]["maxItems"] == 3
        assert body["multipart/form-data"]["schema"]["properties"]["files"]["maxItems"] == 3


def test_ids_out_of_range_and_bodies_that_are_not_json(client):
    for path in ("/v1/items/18446744073709551616", "/v1/items/18446744073709551616/image", "/v1/items/0"):
        assert client.get(path).status_code == 422, path
    assert client.delete("/v1/items/99999999999999999999", headers=AUTH).status_code == 422
    not_utf8 = client.post("/v1/items", content=b'{"texts": ["\xff\xfe"]}',
                           headers={**AUTH, "content-type": "application/json"})
    assert not_utf8.status_code == 400 and "utf-8" in not_utf8.json()["detail"].lower()
    deep = client.post("/v1/items", content=b"[" * 100_000, headers={**AUTH, "content-type": "application/json"})
    assert deep.status_code == 400


def test_method_not_allowed_names_every_allowed_method(client):
    response = client.options("/v1/items/1")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert client.put("/v1/search", json={}).headers["allow"] == "POST"


@BOTH_BACKENDS
def test_info_and_listings_count_each_modality_on_its_own(client):
    """Each modality's count is its own items' (Milvus Lite's count(*) ignores partitions: 30 images, 150 texts
    both read 180 there)."""
    counts = {m: client.get("/v1/items", params={"modality": m, "limit": 1}).json()["total"] for m in ("image", "text")}
    listed = {m: 0 for m in counts}
    for m in counts:
        offset = 0
        while page := client.get("/v1/items", params={"modality": m, "limit": 1000, "offset": offset}).json()["items"]:
            listed[m] += len(page)
            offset += len(page)
    assert counts == listed and counts["image"] != counts["text"]
    indexes = client.get("/v1/info").json()["indexes"]
    assert {m: indexes[m]["count"] for m in counts} == counts
