"""The SQLite item store: committed rows, ids never reused, embeddings round-trip exactly."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from retrieval.errors import UserError
from retrieval.store import ItemStore, NewItem


def _unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_items_round_trip_and_survive_reopening(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite", dim=8, create=True)
    ids = store.add([
        NewItem("image", _unit(0), "a red circle", "/data/a.png", {"split": "test"}),
        NewItem("text", _unit(1), "a red circle", None, {"image_id": 1}),
    ])
    store.close()
    store = ItemStore(tmp_path / "items.sqlite")
    assert store.dim == 8 and ids == [1, 2]
    items = store.get(ids + [99])
    assert set(items) == {1, 2} and items[1].uri == "/data/a.png" and items[2].metadata == {"image_id": 1}
    np.testing.assert_array_equal(store.embeddings_of([2, 1]), np.stack([_unit(1), _unit(0)]))
    assert store.ids("image").tolist() == [1] and store.ids("text").tolist() == [2]
    assert store.uris("image") == {"/data/a.png": 1} and store.integrity_ok()


def test_deleted_ids_are_never_reused(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite", dim=8, create=True)
    ids = store.add([NewItem("text", _unit(n), f"t{n}") for n in range(3)])
    deleted = store.delete(ids[-1])
    assert deleted is not None and deleted.caption == "t2" and store.delete(ids[-1]) is None
    assert store.add([NewItem("text", _unit(9), "new")]) == [ids[-1] + 1]
    assert store.count("text") == 3


def test_iter_embeddings_walks_all_rows_in_chunks(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite", dim=8, create=True)
    store.add([NewItem("image" if n % 3 else "text", _unit(n)) for n in range(25)])
    chunks = list(store.iter_embeddings("image", chunk=4))
    ids = np.concatenate([c[0] for c in chunks])
    assert len(ids) == store.count("image") == 16 and len(chunks) == 4 and list(ids) == sorted(ids)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), store.embeddings_of(ids))


def _counted_by_sqlite(path, modality: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0]


def test_counts_follow_adds_and_deletes_and_are_rebuilt_for_an_older_store(tmp_path):
    path = tmp_path / "items.sqlite"
    store = ItemStore(path, dim=8, create=True)
    ids = store.add([NewItem("image" if n % 2 else "text", _unit(n)) for n in range(7)])
    store.add_rows("image", np.stack([_unit(n) for n in range(5)]), [None] * 5, [None] * 5, [{}] * 5)
    store.delete(ids[1])
    store.delete(ids[0])
    assert (store.count("image"), store.count("text"), store.count(None)) == (7, 3, 10)
    store.close()
    with sqlite3.connect(path) as db:  # a store from before the maintained counts existed
        db.execute("DROP TABLE item_counts")
    store = ItemStore(path)
    assert [store.count(m) for m in ("image", "text")] == [_counted_by_sqlite(path, m) for m in ("image", "text")] == [7, 3]


def test_a_failed_batch_adds_nothing(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite", dim=8, create=True)
    with pytest.raises(ValueError, match="dimensions"):
        store.add([NewItem("text", _unit(0)), NewItem("text", np.ones(5, np.float32))])
    with pytest.raises(ValueError, match="modality"):
        store.add([NewItem("video", _unit(0))])
    assert store.count("text") == 0 == _counted_by_sqlite(tmp_path / "items.sqlite", "text")


def test_missing_store_and_dimension_mismatch_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="item store not found"):
        ItemStore(tmp_path / "nope.sqlite")
    ItemStore(tmp_path / "items.sqlite", dim=8, create=True).close()
    with pytest.raises(UserError, match="8-d embeddings, not 16-d"):
        ItemStore(tmp_path / "items.sqlite", dim=16)
