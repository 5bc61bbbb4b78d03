"""Hostile input against the real app: numbers and text that JSON allows but the rule of `retrieval.json_rules`
refuses, deep nesting, lone surrogates, values older versions stored — no request gets a 5xx, a refused write
stores nothing, and afterwards searches, filtered searches and listings still answer, and answer correctly.

Bodies are sent as raw bytes (`json.dumps(..., allow_nan=True)`: NaN, Infinity and lone surrogates exactly as
an attacker can write them), by hypothesis for the property tests and by hand for the named cases.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_testing import AUTH, make_settings

from retrieval.json_rules import MAX_SAFE_INTEGER
from service.app import create_app

JSON = {"content-type": "application/json"}
MAX_EXAMPLES = 60

# Numbers of every hostile kind: integers up to 10^400, ±inf, NaN, subnormals, -0.0, the edges of the rule.
numbers = st.one_of(
    st.integers(-(10**400), 10**400),
    st.sampled_from([MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER - 1, 2**63, 2**64,
                     -0.0, 5e-324, 2.2250738585072014e-308, 1e308, math.inf, -math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
)
# Keys: long, unicode, lone surrogates included (hypothesis leaves surrogates out unless asked).
keys = st.one_of(st.text(max_size=8), st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                                                            max_size=2), st.just("k" * 300), st.just("キー"))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=6),
                    st.text(st.characters(codec=None, min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3))
metadata_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(keys, inner, max_size=3)), max_leaves=12)


def _raw(body: Any) -> bytes:
    """JSON as an attacker writes it: NaN and Infinity literals, integers of any size, surrogates escaped."""
    return json.dumps(body, allow_nan=True).encode()


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture(scope="module")
def app_client(module_index: Path, checkpoint: Path) -> Iterator[TestClient]:
    """The real app; unexpected exceptions become 500 responses (as on a real server) instead of raising."""
    with TestClient(create_app(make_settings(module_index, checkpoint)), raise_server_exceptions=False) as client:
        yield client


def _embedding(client: TestClient, seed: int) -> list[float]:
    dim = client.get("/v1/info").json()["dim"]
    return np.random.default_rng(seed).standard_normal(dim).round(4).tolist()


def _total(client: TestClient, modality: str = "text") -> int:
    response = client.get("/v1/items", params={"modality": modality, "limit": 1})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def _healthy(client: TestClient) -> None:
    """Searches, filtered searches, listings and batch searches all answer 200."""
    vector = _embedding(client, 0)
    for body in ({"text": "a red circle"}, {"embedding": vector, "target": "text"},
                 {"embedding": vector, "target": "text", "filter": {"mark": {"gte": 0}}},
                 {"embedding": vector, "target": "image", "filter": {"mark": "x", "n": {"in": [1, "a", True]}}}):
        response = client.post("/v1/search", json=body)
        assert response.status_code == 200, (body, response.text)
    for params in ({"limit": 1000}, {"filter": json.dumps({"mark": {"lt": 1e15}})}, {"modality": "image"}):
        response = client.get("/v1/items", params=params)
        assert response.status_code == 200, (params, response.text)


# --- numbers in filters ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["100000000000000000000000", "-1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity",
                                    str(MAX_SAFE_INTEGER + 1), "9007199254740993.0"])
@pytest.mark.parametrize("shape", ["{{\"year\": {n}}}", "{{\"year\": {{\"gte\": {n}}}}}",
                                   "{{\"year\": {{\"in\": [1, {n}]}}}}", "{{\"year\": {{\"gt\": 0, \"lt\": {n}}}}}"])
def test_a_filter_number_outside_the_rule_is_a_422_naming_the_field(app_client, number, shape):
    spec = shape.format(n=number)
    search = app_client.post("/v1/search", content=f'{{"text": "red", "filter": {spec}}}'.encode(), headers=JSON)
    assert search.status_code == 422, search.text
    assert "filter.year" in search.json()["detail"]
    batch = app_client.post("/v1/search/batch", content=f'{{"queries": [{{"text": "red", "filter": {spec}}}]}}'.encode(),
                            headers=JSON)
    assert batch.status_code == 422, batch.text
    listing = app_client.get("/v1/items", params={"filter": spec})
    assert listing.status_code == 422, listing.text
    assert "filter.year" in listing.json()["detail"]


@pytest.mark.parametrize("spec", [b'{"c": "\\ud800"}', b'{"c": {"in": ["a", "\\udfff"]}}', b'{"c": {"lt": "\\udc00z"}}'])
def test_a_filter_string_that_is_not_unicode_is_a_422(app_client, spec):
    """No backend can compare it (Milvus cannot even receive it as UTF-8), and nothing stored can equal it."""
    search = app_client.post("/v1/search", content=b'{"text": "red", "filter": ' + spec + b"}", headers=JSON)
    assert search.status_code == 422, search.text
    assert "filter.c" in search.json()["detail"] and "Unicode" in search.json()["detail"]


def test_numbers_at_the_edge_of_the_rule_filter_exactly(app_client):
    body = {"items": [{"text": "edge one", "metadata": {"edge": MAX_SAFE_INTEGER}},
                      {"text": "edge two", "metadata": {"edge": -MAX_SAFE_INTEGER}},
                      {"text": "edge three", "metadata": {"edge": -0.0}}]}
    added = app_client.post("/v1/items", json=body, headers=AUTH)
    assert added.status_code == 200, added.text
    top, bottom, zero = added.json()["ids"]

    def ids(spec: dict) -> set[int]:
        response = app_client.get("/v1/items", params={"filter": json.dumps(spec), "modality": "text"})
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert ids({"edge": MAX_SAFE_INTEGER}) == {top}
    assert ids({"edge": {"gt": MAX_SAFE_INTEGER - 1}}) == {top}
    assert ids({"edge": {"lte": -MAX_SAFE_INTEGER}}) == {bottom}
    assert ids({"edge": 0}) == {zero}  # -0.0 equals 0
    assert ids({"edge": {"gte": -MAX_SAFE_INTEGER, "lte": MAX_SAFE_INTEGER}}) == {top, bottom, zero}


# --- metadata on every write route ----------------------------------------------------------------------------

BAD_METADATA = {"nan": b'{"y": NaN}', "inf": b'{"y": Infinity}', "1e400": b'{"y": 1e400}',
                "big int": b'{"y": [1, {"z": 100000000000000000000000}]}', "2^53": b'{"y": 9007199254740992}',
                "surrogate key": b'{"\\ud800": 1}', "surrogate value": b'{"y": "a\\udfff"}',
                "deep": json.dumps({"y": _deep(40)}).encode()}


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_bad_metadata_is_refused_on_every_write_route_and_nothing_is_stored(app_client, name):
    meta = BAD_METADATA[name]
    before = _total(app_client)
    vector = json.dumps(_embedding(app_client, 1)).encode()
    bodies = [b'{"texts": ["hostile"], "metadata": [' + meta + b"]}",
              b'{"items": [{"text": "hostile", "metadata": ' + meta + b"}]}",
              b'{"items": [{"text": "ok"}, {"text": "hostile", "embedding": ' + vector + b', "metadata": ' + meta + b"}]}"]
    for body in bodies:
        response = app_client.post("/v1/items", content=body, headers={**AUTH, **JSON})
        assert response.status_code == 422, (name, body[:80], response.text)
        assert "metadata" in response.json()["detail"]
    png = {"files": ("a.png", _png(), "image/png")}
    multipart = app_client.post("/v1/items", files=png, data={"metadata": meta.decode()}, headers=AUTH)
    assert multipart.status_code == 422, (name, multipart.text)
    patch = app_client.patch("/v1/items/1", content=b'{"metadata": ' + meta + b"}", headers={**AUTH, **JSON})
    assert patch.status_code == 422, (name, patch.text)
    assert _total(app_client) == before
    _healthy(app_client)


def _png() -> bytes:
    from service_testing import png_bytes

    return png_bytes()


def test_an_undecodable_upload_file_name_is_kept_readable(app_client):
    # The name's bytes in the part header are not UTF-8: the MIME parser yields lone surrogates for them.
    body = (b'--XX\r\nContent-Disposition: form-data; name="files"; filename="caf\xe9\xff.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + _png() + b"\r\n--XX--\r\n")
    response = app_client.post("/v1/items", content=body,
                               headers={**AUTH, "content-type": "multipart/form-data; boundary=XX"})
    assert response.status_code == 200, response.text
    item = app_client.get(f"/v1/items/{response.json()['ids'][0]}")
    assert item.status_code == 200, item.text
    assert item.json()["metadata"]["filename"] == "caf\ufffd\ufffd.png"
    _healthy(app_client)


# --- property tests ---------------------------------------------------------------------------------------------

@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(metadata=st.dictionaries(keys, metadata_values, max_size=4))
def test_any_metadata_is_stored_exactly_or_refused_and_search_goes_on(app_client, metadata):
    """An accepted item reads back with the metadata sent and is found by a filter on it; a refused one (422)
    stores nothing; either way everyone's searches still answer."""
    marker = abs(hash(json.dumps(metadata, allow_nan=True, sort_keys=True, default=str))) % MAX_SAFE_INTEGER
    body = {"items": [{"text": "property item", "embedding": _embedding(app_client, 2),
                       "metadata": {**metadata, "mark": marker}}]}
    before = _total(app_client)
    response = app_client.post("/v1/items", content=_raw(body), headers={**AUTH, **JSON})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert _total(app_client) == before
    else:
        item_id = response.json()["ids"][0]
        stored = app_client.get(f"/v1/items/{item_id}").json()["metadata"]
        assert stored == json.loads(json.dumps({**metadata, "mark": marker}))
        found = app_client.get("/v1/items", params={"filter": json.dumps({"mark": marker}), "modality": "text"})
        assert item_id in {item["id"] for item in found.json()["items"]}
    _healthy(app_client)


filter_values = st.one_of(numbers, st.booleans(), st.text(max_size=4), st.none(), st.lists(numbers, max_size=2),
                          st.dictionaries(st.sampled_from(["in", "gte", "gt", "lte", "lt", "eq", ""]),
                                          st.one_of(numbers, st.text(max_size=3), st.lists(numbers, max_size=3),
                                                    st.just(_deep(50))), max_size=3))
filters = st.dictionaries(st.one_of(st.sampled_from(["mark", "n", "a.b", "x" * 65, "", "bad key"]), keys),
                          filter_values, max_size=3)


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(spec=filters)
def test_any_filter_answers_200_with_matching_items_or_422(app_client, spec):
    body = {"embedding": _embedding(app_client, 3), "target": "text", "k": 20, "filter": spec}
    search = app_client.post("/v1/search", content=_raw(body), headers=JSON)
    assert search.status_code in (200, 422), search.text
    listing = app_client.get("/v1/items", params={"filter": json.dumps(spec, allow_nan=True), "modality": "text"})
    assert listing.status_code == search.status_code, (search.text, listing.text)
    if search.status_code == 200:
        for hit in search.json()["results"]:
            assert _matches(hit["metadata"], spec), (spec, hit["metadata"])


def _matches(metadata: dict, spec: dict) -> bool:
    """The filter grammar, written again independently of `retrieval.index.filters` (the reference)."""

    def values(field: str) -> list:
        value: Any = metadata
        for key in field.split("."):
            if not isinstance(value, dict) or key not in value:
                return []
            value = value[key]
        return [v for v in (value if isinstance(value, list) else [value]) if not isinstance(v, dict | list)]

    def same(a: Any, b: Any) -> bool:
        kinds = (isinstance(a, bool), isinstance(a, str)) == (isinstance(b, bool), isinstance(b, str))
        return kinds and a == b

    def within(v: Any, bounds: dict) -> bool:
        if isinstance(v, bool) or any(isinstance(v, str) != isinstance(b, str) for b in bounds.values()):
            return False
        ops = {"gte": v >= bounds.get("gte", v), "gt": "gt" not in bounds or v > bounds["gt"],
               "lte": v <= bounds.get("lte", v), "lt": "lt" not in bounds or v < bounds["lt"]}
        return all(ops.values())

    for field, condition in spec.items():
        found = values(field)
        if not isinstance(condition, dict):
            ok = any(same(v, condition) for v in found)
        else:
            bounds = {op: b for op, b in condition.items() if op != "in"}
            ok = (("in" not in condition or any(same(v, c) for v in found for c in condition["in"]))
                  and (not bounds or any(within(v, bounds) for v in found)))
        if not ok:
            return False
    return True


# --- values stored by older versions ----------------------------------------------------------------------------

LEGACY = ['{"mark": NaN, "tag": "legacy"}', '{"mark": Infinity, "tag": "legacy"}', '{"mark": -Infinity}',
          '{"mark": 100000000000000000000000000000, "tag": "legacy"}', '{"mark": [1e999, 2], "tag": "legacy"}',
          '{"\\ud800": "x", "tag": "legacy\\udc00"}', '{"mark": 9007199254740993}']


def test_values_older_versions_stored_never_make_a_search_or_listing_fail(index_dir, checkpoint):
    """Rows written as an older version could (raw SQL, as its store did, while no service held the folder):
    filters treat their bad numbers as matching nothing, and every route that returns them answers."""
    with TestClient(create_app(make_settings(index_dir, checkpoint))) as writer:
        before = _total(writer)
        added = writer.post("/v1/items", json={"texts": [f"legacy {n}" for n in range(len(LEGACY))]}, headers=AUTH)
        ids = added.json()["ids"]
    with sqlite3.connect(index_dir / "items.sqlite") as db:
        db.executemany("UPDATE items SET metadata = ? WHERE id = ?", list(zip(LEGACY, ids, strict=True)))
    # A fresh app reads the store again (no cached filter columns).
    with TestClient(create_app(make_settings(index_dir, checkpoint)), raise_server_exceptions=False) as fresh:
        _healthy(fresh)
        for item_id in ids:
            assert fresh.get(f"/v1/items/{item_id}").status_code == 200
        marked = fresh.get("/v1/items", params={"filter": json.dumps({"mark": {"gte": -1e15}}), "modality": "text"})
        assert marked.status_code == 200, marked.text
        assert {item["id"] for item in marked.json()["items"]} & set(ids) == {ids[4]}  # only [1e999, 2] has a 2
        listing = fresh.get("/v1/items", params={"modality": "text", "offset": before, "limit": 1000})
        assert listing.status_code == 200, listing.text
        shown = {item["id"]: item["metadata"] for item in listing.json()["items"]}
        assert shown[ids[0]] == {"mark": None, "tag": "legacy"}
        assert shown[ids[5]] == {"\ufffd": "x", "tag": "legacy\ufffd"}
        hits = fresh.post("/v1/search", json={"text": "legacy", "target": "text", "k": 50})
        assert hits.status_code == 200, hits.text
