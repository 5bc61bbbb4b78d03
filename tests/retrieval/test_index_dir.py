"""A live index folder: deletions per kind, reconciliation with the store after a crash, snapshots, mmap."""

from __future__ import annotations

import numpy as np
import pytest
from index_testing import make_embedded

from retrieval.errors import UserError
from retrieval.index import IndexDir, ReadOnlyIndexError, build_index, read_index
from retrieval.index.factory import index_ids
from retrieval.store import ItemStore, NewItem


def _build(tmp_path, kind: str, n: int = 1200):
    embedded = make_embedded(tmp_path, n, 60)
    build_index(tmp_path / "idx", embedded, kind=kind)
    return tmp_path / "idx", embedded


def _top_ids(index: IndexDir, modality: str, query: np.ndarray, k: int) -> list[int]:
    return [hit.item.id for hit in index.search(modality, query.reshape(1, -1), k)[0]]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_deleted_items_never_come_back_and_k_stays_full(tmp_path, kind):
    folder, embedded = _build(tmp_path, kind)
    index = IndexDir(folder)
    query = embedded.image_vectors[7]
    before = _top_ids(index, "image", query, 10)
    for item_id in before[:3]:
        assert index.delete(item_id).id == item_id
    after = _top_ids(index, "image", query, 10)
    assert len(after) == 10 and not set(before[:3]) & set(after)
    assert after[:7] == before[3:]  # the remaining neighbours keep their order
    assert index.counts()["image"] == 1200 - 3
    index.close()
    reopened = IndexDir(folder)  # tombstones are rebuilt from the store
    assert _top_ids(reopened, "image", query, 10) == after


def test_many_deletions_trigger_a_rebuild_at_start_up(tmp_path):
    folder, _ = _build(tmp_path, "hnsw")
    index = IndexDir(folder)
    doomed = index.store.ids("image")[:200]
    for item_id in doomed:
        index.delete(int(item_id))
    assert len(index.collections["image"].tombstones) == 200
    index.close()
    reopened = IndexDir(folder)
    collection = reopened.collections["image"]
    assert not collection.tombstones and collection.index.ntotal == 1000  # physically gone


def test_items_only_in_the_store_are_indexed_at_start_up(tmp_path):
    folder, embedded = _build(tmp_path, "hnsw")
    # What a crash after the store commit and before any snapshot leaves behind:
    store = ItemStore(folder / "items.sqlite")
    new_vector = -embedded.image_vectors[3]
    (new_id,) = store.add([NewItem("image", new_vector, "late arrival", "/img/late.png")])
    (gone,) = store.ids("image")[:1]
    store.delete(int(gone))
    store.close()
    index = IndexDir(folder)
    assert _top_ids(index, "image", new_vector, 1) == [new_id]
    assert int(gone) not in _top_ids(index, "image", embedded.image_vectors[0], 50)
    on_disk = index_ids(read_index(folder / "image.faiss"))  # the reconciled snapshot was written
    assert index.collections["image"].tombstones == {int(gone)}  # HNSW cannot drop it until a rebuild
    np.testing.assert_array_equal(np.setdiff1d(on_disk, [int(gone)]), index.store.ids("image"))
    assert index.info()["indexes"]["image"]["count"] == 1200


def test_snapshots_are_atomic_and_stale_temps_are_cleared(tmp_path):
    folder, embedded = _build(tmp_path, "flat", n=50)
    (folder / ".image.faiss.tmp").write_bytes(b"half a file")  # left by a writer killed mid-snapshot
    index = IndexDir(folder)
    assert not (folder / ".image.faiss.tmp").exists()
    assert not index.snapshot()  # nothing changed
    (new_id,) = index.add([NewItem("text", embedded.text_vectors[0], "added")])
    assert index.snapshot() and not list(folder.glob(".*.tmp"))
    assert new_id in index_ids(read_index(folder / "text.faiss"))


def test_memory_mapped_index_searches_but_refuses_writes(tmp_path):
    folder, embedded = _build(tmp_path, "ivfpq")
    plain = IndexDir(folder)
    expected = _top_ids(plain, "image", embedded.image_vectors[5], 5)
    plain.close()
    mapped = IndexDir(folder, mmap=True)
    assert _top_ids(mapped, "image", embedded.image_vectors[5], 5) == expected
    with pytest.raises(ReadOnlyIndexError):
        mapped.add([NewItem("image", embedded.image_vectors[0])])
    with pytest.raises(ReadOnlyIndexError):
        mapped.delete(1)


def test_fingerprint_and_folder_checks(tmp_path):
    folder, _ = _build(tmp_path, "flat", n=20)
    with pytest.raises(UserError, match="was built by model"):
        IndexDir(folder, fingerprint="0" * 16)
    with pytest.raises(UserError, match="not an index directory"):
        IndexDir(tmp_path)
    (folder / "text.faiss").unlink()
    with pytest.raises(UserError, match="text.faiss not found"):
        IndexDir(folder)


def test_image_paths_stay_inside_the_folder(tmp_path):
    folder, _ = _build(tmp_path, "flat", n=20)
    index = IndexDir(folder)
    uri = index.save_image(b"\x89PNG fake bytes", ".png")
    (item_id,) = index.add([NewItem("image", np.eye(32, dtype=np.float32)[0], None, uri)])
    assert index.image_path(index.get(item_id)) == (folder / uri).resolve()
    (escape,) = index.add([NewItem("image", np.eye(32, dtype=np.float32)[1], None, "../../etc/passwd")])
    assert index.image_path(index.get(escape)) is None
