"""The filter grammar over Milvus (Lite, real, in-process) answers exactly as over FAISS, and hostile values stay data."""

from __future__ import annotations

import numpy as np
import pytest
from index_testing import make_embedded, unit_rows

from retrieval.index import IndexDir, build_index
from retrieval.index.filters import FilterError
from retrieval.index.manifest import read_manifest
from retrieval.index.milvus_backend import MilvusIndex
from retrieval.index.milvus_collection import build_milvus_index
from retrieval.index.milvus_filters import facets_of, literal, translate
from retrieval.store import NewItem

HOSTILE = ['x" or id > 0 or "', "x') or (id > 0", 'back\\slash', 'a\\"b', "new\nline", "tab\there", "é ünï 北京",
           "ctrl\x01\x7f", "", "{v}", 'json_contains(facets["s:k"], "a")', "\\", '"']
METADATA = [
    {"year": 2020}, {"year": "2020"}, {"year": 2020.0}, {"year": 2021}, {"year": [2019, 2023]}, {"year": [2020, "x"]},
    {"flag": True}, {"flag": 1}, {"flag": False}, {"flag": [True, 0]},
    {"tag": ["a", "b"]}, {"tag": "a"}, {"tag": ["c"]}, {"tag": [["a"]]}, {"tag": {"a": 1}},
    {"camera": {"make": "x", "iso": 400}}, {"camera": {"make": ["x", "y"]}}, {"camera.make": "x"},
    {"date": "2021-03-01"}, {"date": "2019-12-31"}, {"date": ["2018-01-01", "2022-06-01"]},
    {"n": -1.5}, {"n": 1e20}, {"n": [1, 2, 3]}, {"weird key!": 1, "n": 0}, {},
    *({"k": value} for value in HOSTILE),
]
FILTERS = [
    {"year": 2020}, {"year": "2020"}, {"year": 2020.5}, {"year": {"gte": 2020}}, {"year": {"gt": 2020, "lt": 2024}},
    {"year": {"lt": 2020}}, {"year": {"in": [2020, "x"]}}, {"year": {"gte": 2020, "lt": "2022"}},
    {"year": {"gte": "2020"}}, {"flag": True}, {"flag": False}, {"flag": 1}, {"flag": {"in": [True, 1]}},
    {"tag": "a"}, {"tag": {"in": ["b", "c"]}}, {"tag": {"gte": "b"}}, {"camera.make": "x"}, {"camera.make": "y"},
    {"camera.iso": {"lte": 400}}, {"camera": "x"}, {"date": {"gte": "2020-01-01", "lt": "2022-01-01"}},
    {"date": {"gt": "2021-06-01"}}, {"n": {"gt": 1.5, "lte": 2}}, {"n": {"gte": 1e15}}, {"n": {"lte": 0}}, {"n": -1.5},
    {"n": {"in": [0, 3]}}, {"year": 2020, "flag": True}, {"tag": "a", "year": {"gte": 0}}, {"missing": 1},
    *({"k": value} for value in HOSTILE), {"k": {"in": HOSTILE[:5]}}, {"k": {"gte": '"', "lt": "x"}},
]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same items (caption = position) in a FAISS index folder and in a Milvus Lite collection."""
    folder = tmp_path_factory.mktemp("parity")
    embedded = make_embedded(folder / "emb", 0, 0, dim=8)
    build_index(folder / "faiss", embedded, kind="flat")
    build_milvus_index(folder / "milvus", embedded, str(folder / "lite.db"), "parity")
    faiss_index = IndexDir(folder / "faiss")
    milvus_index = MilvusIndex(folder / "milvus", read_manifest(folder / "milvus"))
    vectors = unit_rows(len(METADATA), 8, seed=3)
    for index in (faiss_index, milvus_index):
        index.add([NewItem("image", v, caption=str(n), metadata=m) for n, (v, m) in enumerate(zip(vectors, METADATA,
                                                                                                strict=True))])
    yield faiss_index, milvus_index
    faiss_index.close()
    milvus_index.close()


def _positions(index, spec: dict) -> list[int]:
    items, total = index.listing("image", spec, 0, 1000)
    assert total == len(items)
    return sorted(int(item.caption) for item in items)


@pytest.mark.parametrize("spec", FILTERS, ids=[repr(f)[:60] for f in FILTERS])
def test_milvus_filters_match_what_faiss_matches(both, spec):
    faiss_index, milvus_index = both
    assert _positions(milvus_index, spec) == _positions(faiss_index, spec)


def test_filtered_search_returns_the_same_items_on_both_backends(both):
    faiss_index, milvus_index = both
    query = unit_rows(1, 8, seed=9)
    for spec in ({"year": {"gte": 2020}}, {"tag": "a"}, {"k": HOSTILE[0]}):
        found = [[int(h.item.caption) for h in index.search("image", query, 5, allowed=index.matching("image", spec))[0]]
                 for index in both]
        assert found[0] == found[1] and found[0], spec


def test_each_hostile_value_matches_only_its_own_item(both):
    _, milvus_index = both
    for value in HOSTILE:
        assert _positions(milvus_index, {"k": value}) == [METADATA.index({"k": value})], repr(value)


@pytest.mark.parametrize("spec", [{'a"]) or id > 0 or (["': 1}, {"a b": 1}, {"": 1}, {"a..b": 1}, {"k": {"eq": 1}},
                                  {"k": {"in": [{"x": 1}]}}, {"k": None}, {"k": float("nan")}])
def test_hostile_keys_and_bad_conditions_are_refused_before_any_expression(spec):
    with pytest.raises(FilterError):
        translate(spec)


def test_literals_escape_quotes_and_backslashes():
    assert literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert literal(True) == "1" and literal(2020) == "2020.0"


def test_facets_split_values_by_type_and_skip_unreachable_keys():
    facets = facets_of({"y": [2020, "2020", True], "c": {"m": "x"}, "bad key": 1, "one": [5]})
    assert facets["n:y"] == [2020.0] and facets["s:y"] == ["2020"] and facets["b:y"] == [1]
    assert facets["N:y"] == 2020.0 and facets["s:c.m"] == ["x"] and facets["N:one"] == 5.0
    assert not any("bad key" in key for key in facets)
    assert facets_of({"n": [1, 2]})["L:n"] == 1 and np.isclose(facets_of({"n": 1.5})["N:n"], 1.5)
