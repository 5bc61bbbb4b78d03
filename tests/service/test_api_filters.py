"""Metadata filters on every search route, through the real app: the results are exactly the best matching
items (checked against the stored vectors), k of them whenever k items match."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from service_testing import AUTH, BOTH_BACKENDS, png_bytes

from retrieval.store import ItemStore

pytestmark = BOTH_BACKENDS  # every test here, over FAISS and over Milvus Lite


def _metadata(n: int) -> dict:
    return {"n": n, "parity": "even" if n % 2 == 0 else "odd", "year": 2000 + n % 10, "taken": f"2020-01-{n:02d}",
            "tags": ["all", f"t{n % 3}"], "camera": {"make": "A" if n % 2 else "B"}, "flag": n % 5 == 0}


@pytest.fixture(scope="module")
def tagged(client, module_index) -> dict[int, dict]:
    """Every image item gets known metadata (through PATCH); id → its metadata."""
    store = ItemStore(module_index / "items.sqlite")
    ids = [int(i) for i in store.ids("image")]
    out = {}
    for n, item_id in enumerate(ids, start=1):
        response = client.patch(f"/v1/items/{item_id}", json={"metadata": _metadata(n)}, headers=AUTH)
        assert response.status_code == 200, response.text
        out[item_id] = response.json()["metadata"]
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _search(client, **body) -> list[dict]:
    response = client.post("/v1/search", json={"text": "a red circle", "target": "image", **body})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _exact(client, module_index, ids: list[int], k: int, text: str = "a red circle") -> list[int]:
    """The top-k of `ids` by cosine with the text's embedding, computed here from the stored vectors."""
    query = np.asarray(client.post("/v1/embed/text", json={"texts": [text]}).json()["embeddings"][0])
    scores = ItemStore(module_index / "items.sqlite").embeddings_of(ids) @ query
    order = sorted(range(len(ids)), key=lambda n: (-scores[n], ids[n]))
    return [ids[n] for n in order[:k]]


@pytest.mark.parametrize(("spec", "rule"), [
    ({"parity": "even"}, lambda m: m["parity"] == "even"),
    ({"n": {"in": [3, 4, 5, 29]}}, lambda m: m["n"] in (3, 4, 5, 29)),
    ({"year": {"gte": 2003, "lt": 2006}}, lambda m: 2003 <= m["year"] < 2006),
    ({"year": {"gt": 2007}, "parity": "odd"}, lambda m: m["year"] > 2007 and m["parity"] == "odd"),
    ({"taken": {"gte": "2020-01-10", "lte": "2020-01-20"}}, lambda m: "2020-01-10" <= m["taken"] <= "2020-01-20"),
    ({"tags": "t1"}, lambda m: "t1" in m["tags"]),
    ({"camera.make": "A"}, lambda m: m["camera"]["make"] == "A"),
    ({"flag": True}, lambda m: m["flag"] is True),
    ({"year": "2003"}, lambda m: False),  # a string never equals a number
    ({"n": {"gte": 3, "lt": "z"}}, lambda m: False),  # bounds of mixed types match nothing
])
def test_filtered_search_is_the_exact_top_k_of_the_matching_items(client, module_index, tagged, spec, rule):
    matching = sorted(i for i, m in tagged.items() if rule(m))
    for k in (1, 5, 30):
        found = [r["id"] for r in _search(client, filter=spec, k=k)]
        assert found == _exact(client, module_index, matching, k) if matching else found == []
        assert len(found) == min(k, len(matching))  # k results whenever k items match


def test_every_search_route_filters(client, module_index, tagged):
    spec = {"parity": "odd", "year": {"lte": 2004}}
    matching = {i for i, m in tagged.items() if m["parity"] == "odd" and m["year"] <= 2004}
    some_image = next(iter(tagged))
    routes = [
        (client.post("/v1/search/image", files={"file": ("q.png", png_bytes(), "image/png")},
                     data={"k": "30", "filter": json.dumps(spec)}), matching),
        (client.post("/v1/search", json={"item_id": some_image, "k": 30, "filter": spec}), matching - {some_image}),
        (client.post("/v1/search", json={"embedding": [0.1] * 32, "k": 30, "filter": spec}), matching),
        (client.post("/v1/search", json={"text": "a square", "image_b64": _b64(png_bytes()), "k": 30, "filter": spec}),
         matching),
    ]
    for response, expected in routes:
        assert response.status_code == 200, response.text
        assert {r["id"] for r in response.json()["results"]} == expected
    batch = client.post("/v1/search/batch", json={"queries": [{"text": "a", "k": 30, "filter": spec},
                                                              {"text": "a", "k": 30}]})
    assert batch.status_code == 200
    filtered, unfiltered = batch.json()["results"]
    assert {r["id"] for r in filtered} == matching and len(unfiltered) == 30


def test_filters_see_writes_at_once(client, tagged):
    spec = {"batch": "fresh-writes"}
    added = client.post("/v1/items", json={"texts": ["a new caption", "another one"],
                                            "metadata": [{"batch": "fresh-writes"}, {"batch": "other"}]}, headers=AUTH)
    new, other = added.json()["ids"]
    assert [r["id"] for r in _search(client, target="text", filter=spec)] == [new]
    client.patch(f"/v1/items/{other}", json={"metadata": {"batch": "fresh-writes"}}, headers=AUTH)
    assert {r["id"] for r in _search(client, target="text", filter=spec)} == {new, other}
    client.patch(f"/v1/items/{other}", json={"metadata": {"batch": None}}, headers=AUTH)  # null removes the key
    client.delete(f"/v1/items/{new}", headers=AUTH)
    assert _search(client, target="text", filter=spec) == []


@pytest.mark.parametrize(("spec", "words"), [
    ({"bad key!": 1}, "filter field"),
    ({"year": {}}, "filter.year"),
    ({"year": {"between": [1, 2]}}, "filter.year"),
    ({"year": {"in": []}}, "filter.year.in"),
    ({"year": [2001, 2002]}, "filter.year"),
    ({"year": None}, "filter.year"),
])
def test_invalid_filters_are_422_naming_the_field(client, spec, words):
    response = client.post("/v1/search", json={"text": "a", "filter": spec})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    listed = client.get("/v1/items", params={"filter": json.dumps(spec)})
    assert listed.status_code == 422 and words in listed.json()["detail"], listed.text
