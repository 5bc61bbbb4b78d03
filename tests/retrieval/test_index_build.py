"""`build_index`: kinds, tuning to the recall target, manifest and store contents."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from index_testing import make_embedded, unit_rows

from retrieval.errors import UserError
from retrieval.index import Collection, build_index, choose_kind, make_probe, measure_recall, read_index
from retrieval.index.factory import FLAT_MAX_ITEMS, index_ids
from retrieval.store import ItemStore


def test_auto_kind_follows_size_and_memory():
    assert choose_kind(FLAT_MAX_ITEMS - 1, 512) == "flat"
    assert choose_kind(FLAT_MAX_ITEMS, 512) == "hnsw"
    assert choose_kind(5_000_000, 512, memory_budget=1 << 30) == "ondisk"


def test_flat_index_dir_layout_and_contents(tmp_path):
    embedded = make_embedded(tmp_path, 40, 120)
    manifest = build_index(tmp_path / "idx", embedded, kind="auto")
    on_disk = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert on_disk["fingerprint"] == embedded.fingerprint and on_disk["dim"] == 32
    assert on_disk["metric"] == "inner_product" and on_disk["created"]
    for modality, n in (("image", 40), ("text", 120)):
        info = manifest.collections[modality]
        assert info.kind == "flat" and info.count == n and info.recall_at_10 == 1.0
        assert on_disk["collections"][modality]["factory"] == "IDMap2,Flat"
    store = ItemStore(tmp_path / "idx" / "items.sqlite")
    index = read_index(tmp_path / "idx" / "image.faiss")
    np.testing.assert_array_equal(np.sort(index_ids(index)), store.ids("image"))
    _, found = index.search(embedded.image_vectors[:5], 1)
    assert found[:, 0].tolist() == store.ids("image")[:5].tolist()  # each vector finds its own item
    text = store.get([int(store.ids("text")[41])])
    (item,) = text.values()
    assert item.caption == "text 41" and item.metadata["image_id"] == int(store.ids("image")[1])


@pytest.mark.parametrize(("kind", "factory"), [("hnsw", "IDMap2,HNSW32,Flat"), ("ivfpq", "Refine(SQ8)")])
def test_ann_kinds_are_tuned_to_the_recall_target(tmp_path, kind, factory):
    embedded = make_embedded(tmp_path, 2500, 300)
    manifest = build_index(tmp_path / "idx", embedded, kind=kind, target_recall=0.98)
    info = manifest.collections["image"]
    assert info.kind == kind and factory in info.factory and info.recall_at_10 >= 0.98
    # A collection too small for IVF-PQ training falls back to exact search.
    assert manifest.collections["text"].kind == ("flat" if kind == "ivfpq" else kind)
    # Independent check with fresh queries: the saved index with its saved search parameters.
    collection = Collection("image", read_index(tmp_path / "idx" / "image.faiss"), kind, info.search_params)
    ids = ItemStore(tmp_path / "idx" / "items.sqlite").ids("image")
    probe = make_probe(embedded.image_vectors, ids, unit_rows(300, 32, seed=7), n_queries=400, seed=11)
    assert measure_recall(collection, probe) >= 0.95


def test_ivfpq_without_refine_and_small_collections(tmp_path, caplog):
    embedded = make_embedded(tmp_path, 1200, 0)
    manifest = build_index(tmp_path / "a", embedded, kind="ivfpq", params={"refine": None, "nlist": 16})
    # No texts: the image index can only be tuned on image→image queries, and the build says so.
    assert "no text vectors to tune with" in caplog.text and "--text-file" in caplog.text
    assert manifest.collections["image"].factory == "IDMap2,IVF16,PQ8x8"
    assert isinstance(faiss.downcast_index(read_index(tmp_path / "a" / "image.faiss").index), faiss.IndexIVFPQ)
    assert manifest.collections["text"].count == 0 and manifest.collections["text"].kind == "flat"
    small = build_index(tmp_path / "b", make_embedded(tmp_path, 500, 0), kind="ivfpq")
    assert small.collections["image"].kind == "flat"


def test_an_existing_index_is_replaced_only_with_force(tmp_path):
    build_index(tmp_path / "idx", make_embedded(tmp_path, 10, 10))
    with pytest.raises(UserError, match="already holds an index"):
        build_index(tmp_path / "idx", make_embedded(tmp_path, 12, 12))
    manifest = build_index(tmp_path / "idx", make_embedded(tmp_path, 12, 12), force=True)
    assert manifest.collections["image"].count == 12
    assert ItemStore(tmp_path / "idx" / "items.sqlite").count("image") == 12
