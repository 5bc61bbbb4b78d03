"""The service over an ondisk index: adds (acknowledged after the commit) searchable at once and after a restart,
deletes, a read-only replica, and a memory budget the index does not fit refused at start-up."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, make_settings

from retrieval.checkpoint import read_checkpoint
from retrieval.errors import UserError
from retrieval.index import build_index
from service.app import create_app
from service.engine import load_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
from index_testing import make_embedded  # noqa: E402


@pytest.fixture
def ondisk_index(tmp_path: Path, checkpoint: Path) -> Path:
    fingerprint = read_checkpoint(checkpoint)["fingerprint"]
    build_index(tmp_path / "idx", make_embedded(tmp_path, 3000, 1500, dim=32, fingerprint=fingerprint), kind="ondisk")
    return tmp_path / "idx"


def _search(client: TestClient, vector, target: str = "text") -> list[int]:
    answer = client.post("/v1/search", json={"embedding": list(map(float, vector)), "target": target, "k": 5})
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["results"]]


def test_adds_and_deletes_through_the_api(ondisk_index: Path, checkpoint: Path):
    settings = make_settings(ondisk_index, checkpoint)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/info").json()["indexes"]["text"]["kind"] == "ondisk"
        added = client.post("/v1/items", json={"texts": ["a small green triangle"]}, headers=AUTH)
        assert added.status_code == 200, added.text
        (new_id,) = added.json()["ids"]
        vector = client.post("/v1/embed/text", json={"texts": ["a small green triangle"]}).json()["embeddings"][0]
        assert _search(client, vector)[0] == new_id
        victim = _search(client, vector)[1]
        assert client.delete(f"/v1/items/{victim}", headers=AUTH).status_code == 200
        assert victim not in _search(client, vector)
    with TestClient(create_app(settings)) as client:  # restart: delta and tombstone replayed from the store
        assert _search(client, vector)[0] == new_id and victim not in _search(client, vector)
    with TestClient(create_app(make_settings(ondisk_index, checkpoint, mmap=True))) as replica:
        assert _search(replica, vector)[0] == new_id
        refused = replica.post("/v1/items", json={"texts": ["x"]}, headers=AUTH)
        assert refused.status_code == 409


def test_a_memory_budget_the_index_exceeds_is_refused(ondisk_index: Path, checkpoint: Path):
    with pytest.raises(UserError, match=r"needs about .* over the memory budget 64KiB"):
        load_engine(make_settings(ondisk_index, checkpoint, memory_budget="64KiB"))
    engine = load_engine(make_settings(ondisk_index, checkpoint, memory_budget="1GiB"))
    assert engine.index.counts()["image"] == 3000 and np.isfinite(engine.index.resident_bytes())
    engine.index.close()
