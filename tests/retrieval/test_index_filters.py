"""Filtered search inside FAISS for every index kind: k matching results whenever k items match, close to the
exact filtered top-k, deleted items never back; and the metadata filter's matching rules."""

from __future__ import annotations

import numpy as np
import pytest
from index_testing import make_embedded

from retrieval.index import IndexDir, build_index, collection
from retrieval.index.filters import FilterError, check_filter
from retrieval.store import NewItem

N = 1200


@pytest.fixture(scope="module", params=["flat", "hnsw", "ivfpq"])
def built(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    embedded = make_embedded(folder, N, 60)
    build_index(folder / "idx", embedded, kind=request.param)
    return folder / "idx", embedded


@pytest.mark.parametrize("exhaustive", [True, False], ids=["small-match-sets-exhaustive", "ann-with-selector"])
@pytest.mark.parametrize("bound", [12, 120, 600], ids=["1%", "10%", "50%"])
def test_filtered_search_returns_k_matches_close_to_the_exact_ones(built, monkeypatch, exhaustive, bound):
    folder, embedded = built
    if not exhaustive:
        monkeypatch.setattr(collection, "EXACT_MAX_MATCHES", 0)
    index = IndexDir(folder)
    allowed = index.matching("image", {"n": {"lt": bound}})
    assert len(allowed) == bound  # image n is item n + 1: `make_embedded` gives each its index as metadata
    queries = embedded.image_vectors[bound + 1 : bound + 41]  # outside the filter: its neighbours mostly are too
    exact = np.argsort(-(queries @ embedded.image_vectors[:bound].T), axis=1)[:, :10] + 1
    hits = index.search("image", queries, 10, allowed=allowed)
    recall = np.mean([len({h.item.id for h in row} & set(want)) / 10 for row, want in zip(hits, exact, strict=True)])
    assert all(len(row) == 10 and all(h.item.metadata["n"] < bound for h in row) for row in hits)
    assert recall >= 0.9, recall
    index.close()


def test_deleted_matches_never_come_back(built):
    folder, embedded = built
    index = IndexDir(folder)
    spec = {"n": {"lt": 30}}
    query = embedded.image_vectors[5:6]
    before = [h.item.id for h in index.search("image", query, 10, allowed=index.matching("image", spec))[0]]
    index.delete(before[0])
    after = [h.item.id for h in index.search("image", query, 10, allowed=index.matching("image", spec))[0]]
    assert len(after) == 10 and before[0] not in after
    index.close()


def test_matching_rules(tmp_path):
    build_index(tmp_path / "idx", make_embedded(tmp_path, 0, 0), kind="flat")
    index = IndexDir(tmp_path / "idx")
    vector = np.ones(32, np.float32) / np.sqrt(32)
    stored = [{"tags": ["a", "b"], "year": 2020, "day": "2021-05-01", "flag": True, "cam": {"make": "X"}},
              {"tags": "b", "year": 2021.5, "day": "2021-06-30", "flag": 1, "cam": {"make": "Y"}},
              {"year": "2020", "cam": "X"}]
    ids = index.add([NewItem("text", vector, f"t{n}", None, meta) for n, meta in enumerate(stored)])

    def match(spec):
        return [ids.index(i) for i in index.matching("text", spec)]

    assert match({"tags": "a"}) == [0] and match({"tags": {"in": ["b", "z"]}}) == [0, 1]
    assert match({"year": 2020}) == [0] and match({"year": "2020"}) == [2]  # types never mix
    assert match({"year": {"gt": 2020, "lte": 2022}}) == [1]
    assert match({"day": {"gte": "2021-06-01"}}) == [1]
    assert match({"flag": True}) == [0] and match({"flag": 1}) == [1]
    assert match({"cam.make": "X"}) == [0] and match({"cam": "X"}) == [2]  # an object value never matches
    assert match({"year": {"gte": 2020}, "tags": "b"}) == [0, 1]
    assert match({}) == [0, 1, 2]
    index.update_metadata(ids[2], {"tags": ["a"]})  # the cached columns follow writes
    assert match({"tags": "a"}) == [0, 2]
    for bad in ({"a b": 1}, {"x": {}}, {"x": {"near": 1}}, {"x": {"in": []}}, {"x": None}, {"x": [1]},
                {"x": float("nan")}, {"x": {"gte": None}}):
        with pytest.raises(FilterError):
            check_filter(bad)
    index.close()


def test_cached_columns_follow_writes_exactly_as_a_rescan_would(tmp_path):
    build_index(tmp_path / "idx", make_embedded(tmp_path, 0, 0), kind="flat")
    index = IndexDir(tmp_path / "idx")
    rng = np.random.default_rng(0)
    vector = np.ones(32, np.float32) / np.sqrt(32)
    specs = [{"size": {"gte": 3, "lt": 7}}, {"word": {"in": ["b", "a longer word than before"]}}, {"ok": False},
             {"tags": "x"}, {"deep.er": {"lte": "m"}}]

    def random_metadata() -> dict:
        words = ["a", "b", "c", "a longer word than before", "z"]
        return {"size": int(rng.integers(0, 10)), "word": str(rng.choice(words)), "ok": bool(rng.integers(0, 2)),
                "tags": list(rng.choice(["x", "y", "z"], int(rng.integers(0, 3)))), "deep": {"er": str(rng.choice(words))}}

    ids = index.add([NewItem("text", vector, "t", None, random_metadata()) for _ in range(40)])
    for spec in specs:
        index.matching("text", spec)  # every column cached before the writes
    for step in range(30):
        if step % 3 == 0:
            ids += index.add([NewItem("text", vector, "t", None, random_metadata()) for _ in range(3)])
        elif step % 3 == 1:
            index.delete(ids.pop(int(rng.integers(0, len(ids)))))
        else:
            index.update_metadata(ids[int(rng.integers(0, len(ids)))], {"size": None, "word": "b", "tags": ["x"]})
        cached = [index.matching("text", spec).tolist() for spec in specs]
        index.filters.invalidate()
        assert cached == [index.matching("text", spec).tolist() for spec in specs], step
    index.close()
