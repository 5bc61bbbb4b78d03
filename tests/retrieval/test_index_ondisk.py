"""The ondisk kind: recall on held-out queries, adds and deletes replayed from the store after a crash,
compaction, read-only replicas following a primary, memory budgets, and builds that fail without harm."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from index_testing import crash, make_embedded, unit_rows

from retrieval.embed import Embedded
from retrieval.errors import UserError
from retrieval.index import IndexDir, build_index, choose_kind
from retrieval.index.budget import parse_bytes
from retrieval.index.manifest import read_manifest
from retrieval.index.tune import exact_search
from retrieval.store import NewItem

N = 6000


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Embedded:
    return make_embedded(tmp_path_factory.mktemp("emb"), N, 400, dim=32)


@pytest.fixture
def folder(tmp_path, embedded) -> Path:
    build_index(tmp_path / "idx", embedded, kind="ondisk")
    return tmp_path / "idx"


def _top(index: IndexDir, query: np.ndarray, k: int = 10) -> list[int]:
    return [hit.item.id for hit in index.search("image", query.reshape(1, -1).astype(np.float32), k)[0]]


def test_recall_on_held_out_queries_and_files(folder, embedded):
    manifest = read_manifest(folder)
    info = manifest.collections["image"]
    assert info.kind == "ondisk" and info.factory.startswith("IVF") and info.factory.endswith("SQ8")
    assert info.max_id == N + 400 and info.build_stats["add_vectors_per_s"] > 0
    assert sorted(p.name for p in folder.glob("image.*")) == ["image.g1.faiss", "image.g1.ivfdata", "image.trained.faiss"]
    assert not (folder / ".staging").exists()
    index = IndexDir(folder)
    queries = embedded.text_vectors[:200]  # held out: captions, not in the image collection
    truth = exact_search(queries, embedded.image_vectors, np.arange(1, N + 1), 10)
    hits = [len(set(_top(index, q)) & set(t)) for q, t in zip(queries, truth, strict=True)]
    assert np.mean(hits) / 10 >= 0.95


def test_adds_and_deletes_survive_a_crash_and_compaction(folder, embedded):
    index = IndexDir(folder)
    query = embedded.image_vectors[5]
    new = -embedded.image_vectors[0]
    (new_id,) = index.add([NewItem("image", new, "late")])
    gone = _top(index, query, 3)
    for item_id in gone:
        index.delete(item_id)
    assert _top(index, new, 1) == [new_id]
    assert not set(gone) & set(_top(index, query, 10)) and len(_top(index, query, 10)) == 10
    crash(index)  # the store has every acknowledged change; the base file was never touched
    reopened = IndexDir(folder)
    image = reopened.collections["image"]
    assert image.delta.ntotal == 1 and image.tombstones == set(gone)
    assert _top(reopened, new, 1) == [new_id] and not set(gone) & set(_top(reopened, query, 10))
    report = reopened.compact("image")
    assert report["vectors"] == N + 1 - 3 and report["dropped"] == 3
    assert not image.tombstones and image.delta.ntotal == 0 and image.file == "image.g2.faiss"
    assert not (folder / "image.g1.ivfdata").exists()
    (after_id,) = reopened.add([NewItem("image", -embedded.image_vectors[1], "after compaction")])
    reopened.delete(new_id)
    crash(reopened)
    again = IndexDir(folder)
    assert again.collections["image"].index.ntotal == N - 2
    assert again.collections["image"].tombstones == {new_id} and _top(again, -embedded.image_vectors[1], 1) == [after_id]
    assert again.counts()["image"] == N - 3 + 1


def test_a_crashed_compaction_leaves_the_old_generation(folder):
    index = IndexDir(folder)
    # What a crash between writing generation 2 and switching the manifest leaves: unreferenced files.
    (folder / "image.g2.faiss").write_bytes(b"partial")
    (folder / "image.g2.ivfdata").write_bytes(b"partial")
    index.add([NewItem("image", unit_rows(1, 32, 5)[0], "x")])
    crash(index)
    reopened = IndexDir(folder)
    assert reopened.collections["image"].file == "image.g1.faiss" and not (folder / "image.g2.faiss").exists()
    assert reopened.compact("image")["file"] == "image.g2.faiss"


def test_a_read_only_replica_follows_the_primary(folder, embedded):
    primary = IndexDir(folder)
    replica = IndexDir(folder, mmap=True)
    new = -embedded.image_vectors[2]
    (new_id,) = primary.add([NewItem("image", new, "new")])
    victim = _top(primary, embedded.image_vectors[9], 1)[0]
    primary.delete(victim)
    assert new_id not in _top(replica, new, 1)
    replica.refresh()
    assert _top(replica, new, 1) == [new_id] and victim not in _top(replica, embedded.image_vectors[9], 10)
    primary.compact("image")
    replica.refresh()
    image = replica.collections["image"]
    assert image.file == "image.g2.faiss" and image.delta.ntotal == 0 and not image.tombstones
    assert _top(replica, new, 1) == [new_id]
    with pytest.raises(Exception, match="read-only"):
        replica.add([NewItem("image", new, "refused")])


def test_filtered_search_on_ondisk(folder, embedded):
    index = IndexDir(folder)
    allowed = np.arange(1, N + 1, 97, dtype=np.int64)
    hits = index.search("image", embedded.image_vectors[:3], 10, allowed=allowed)
    assert all(len(row) == 10 and {h.item.id for h in row} <= set(allowed.tolist()) for row in hits)


def test_memory_budgets():
    assert parse_bytes("4GiB") == 4 << 30 and parse_bytes("512MB") == 512 * 10**6 and parse_bytes("1.5g") == 3 << 29
    with pytest.raises(UserError, match="give a size"):
        parse_bytes("four gigs")
    assert choose_kind(10_000_000, 128, 4 << 30) == "ondisk"
    assert choose_kind(500_000, 128, 4 << 30) == "hnsw"
    assert choose_kind(1_000_000, 128, 4 << 30) == "ondisk"  # an HNSW build of 1M takes many minutes here
    assert choose_kind(500_000, 512, 100 << 20) == "ondisk"  # HNSW would not fit the budget
    with pytest.raises(UserError, match=r"too small for 10,000,000 128-d vectors.*at least") as err:
        choose_kind(10_000_000, 128, parse_bytes("100MiB"))
    assert "\n" not in str(err.value)


def test_build_refuses_a_budget_too_small_and_keeps_the_old_index(folder, embedded):
    with pytest.raises(UserError, match="too small"):
        build_index(folder, embedded, kind="auto", memory_budget=1 << 10, force=True)
    assert _top(IndexDir(folder), embedded.image_vectors[4], 1) == [5]


class _Interrupted(Sequence):
    """Caption entries whose second half cannot be read: the build is interrupted there (a Ctrl-C)."""

    def __init__(self, entries: list) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):
        if isinstance(key, slice) and (key.start or 0) > 0:
            raise KeyboardInterrupt
        return self.entries[key]


def test_an_interrupted_build_leaves_the_old_index(folder, embedded, monkeypatch):
    monkeypatch.setattr("retrieval.index.build.INSERT_CHUNK", 200)
    partial = Embedded(**{**embedded.__dict__, "texts": _Interrupted(embedded.texts)})
    with pytest.raises(UserError, match=r"interrupted .* is as it was"):
        build_index(folder, partial, kind="ondisk", force=True)
    assert not (folder / ".staging").exists()
    assert _top(IndexDir(folder), embedded.image_vectors[4], 1) == [5]


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """A 4 MiB tmpfs."""
    return tmpfs("4m")


def test_a_full_disk_is_one_line_and_keeps_the_old_index(small_disk, tmp_path):
    small = make_embedded(tmp_path, 2000, 0, dim=32)
    build_index(small_disk / "idx", small, kind="ondisk")
    big = make_embedded(tmp_path, 20_000, 0, dim=32)
    with pytest.raises(UserError, match="needs about .* of disk") as err:
        build_index(small_disk / "idx", big, kind="ondisk", force=True)
    assert "\n" not in str(err.value)
    assert _top(IndexDir(small_disk / "idx"), small.image_vectors[4], 1) == [5]
    assert sorted(os.listdir(small_disk / "idx")) == sorted(
        [".writer.lock", "image.g1.faiss", "image.g1.ivfdata", "image.trained.faiss", "items.sqlite", "manifest.json",
         "text.faiss"]
        + [n for n in os.listdir(small_disk / "idx") if n.startswith("items.sqlite-")])
