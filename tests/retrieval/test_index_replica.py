"""A read-only replica (`serve --mmap`) never deletes or writes anything in the index folder, and its refresh
tombstones a delete that lands between its two reads of the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from index_testing import make_embedded

from retrieval.index import IndexDir, build_index
from retrieval.store import ItemStore, NewItem


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under the folder with its size and content hash (SQLite's shared-memory index `-shm`, which
    every reader maps by design, excluded)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.endswith("-shm")}


@pytest.mark.parametrize("kind", ["hnsw", "ondisk"])
def test_a_replica_writes_and_deletes_nothing(tmp_path, kind):
    embedded = make_embedded(tmp_path, 1200, 50, dim=32)
    folder = tmp_path / "idx"
    build_index(folder, embedded, kind=kind)
    primary = ItemStore(folder / "items.sqlite")  # a running primary, which committed rows after its last snapshot
    primary.add([NewItem("image", embedded.image_vectors[n], f"late {n}") for n in range(3)])
    primary.delete(5)
    (folder / ".manifest.json.tmp").write_bytes(b"the primary's atomic write in progress")
    (folder / "images").mkdir()
    (folder / "images" / ".abc.png.tmp").write_bytes(b"an upload in progress")
    before = _files(folder)
    replica = IndexDir(folder, mmap=True)
    ids = [hit.item.id for hit in replica.search("image", embedded.image_vectors[:1], 5)[0]]
    assert len(ids) == 5 and 5 not in ids
    replica.refresh()
    replica.close()
    assert _files(folder) == before
    primary.close()


def test_a_delete_between_the_refresh_reads_is_tombstoned(tmp_path):
    embedded = make_embedded(tmp_path, 1200, 50, dim=32)
    folder = tmp_path / "idx"
    build_index(folder, embedded, kind="ondisk")
    primary, replica = IndexDir(folder), IndexDir(folder, mmap=True)
    query = -embedded.image_vectors[7]
    added = primary.add([NewItem("image", query, "new")])[0]
    read_deletions = replica.store.deletions_since

    def deleted_meanwhile(modality: str, seq: int) -> tuple[np.ndarray, int]:
        primary.delete(added)  # the primary's delete commits after the replica read the new rows
        return read_deletions(modality, seq)

    replica.store.deletions_since = deleted_meanwhile
    replica.refresh()
    hits = replica.search("image", query[None], 10)[0]
    assert added not in [hit.item.id for hit in hits]
    assert len(hits) == 10
