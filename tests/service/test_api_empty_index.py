"""An empty collection of every kind (everything deleted, then a restart) answers every search route with 200 and
no results: with and without filter, offset, min_score, item_id, in batches and on /knn-service."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import make_settings

from retrieval.checkpoint import read_checkpoint
from retrieval.index import build_index
from service.app import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
from index_testing import make_embedded  # noqa: E402


def _delete_every_image(index_dir: Path) -> None:
    """What deleting each image through the API commits, in one transaction (a store row, a deletion row)."""
    with sqlite3.connect(index_dir / "items.sqlite") as db:
        db.execute("INSERT INTO deletions (id, modality) SELECT id, modality FROM items WHERE modality = 'image'")
        db.execute("DELETE FROM items WHERE modality = 'image'")
        db.execute("UPDATE item_counts SET n = 0 WHERE modality = 'image'")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "ondisk"])
def test_every_search_route_on_an_empty_collection_answers_200_with_nothing(kind, tmp_path, checkpoint):
    fingerprint = read_checkpoint(checkpoint)["fingerprint"]
    n = 1200 if kind in ("ivfpq", "ondisk") else 60  # IVF kinds need enough vectors to train
    build_index(tmp_path / "idx", make_embedded(tmp_path, n, 20, dim=32, fingerprint=fingerprint), kind=kind)
    _delete_every_image(tmp_path / "idx")
    with TestClient(create_app(make_settings(tmp_path / "idx", checkpoint))) as client:
        info = client.get("/v1/info").json()["indexes"]["image"]
        assert info["count"] == 0 and info["kind"] == kind
        text_id = client.get("/v1/items", params={"modality": "text", "limit": 1}).json()["items"][0]["id"]
        vector = [1.0] + [0.0] * 31
        bodies = [{"text": "a red circle"}, {"embedding": vector}, {"item_id": text_id},
                  {"embedding": vector, "filter": {"n": {"gte": 0}}}, {"embedding": vector, "filter": {"n": 3}},
                  {"embedding": vector, "offset": 5, "k": 3}, {"embedding": vector, "min_score": -1},
                  {"item_id": text_id, "filter": {"n": {"in": [1, 2]}}, "offset": 1, "min_score": 0.5}]
        for body in bodies:
            response = client.post("/v1/search", json={**body, "target": "image"})
            assert response.status_code == 200, (body, response.text)
            assert response.json()["results"] == [], body
        batch = client.post("/v1/search/batch", json={"queries": [{**b, "target": "image"} for b in bodies]})
        assert batch.status_code == 200, batch.text
        assert batch.json()["results"] == [[] for _ in bodies]
        knn = client.post("/knn-service", json={"text": "a red circle", "modality": "image", "num_images": 5})
        assert knn.status_code == 200 and knn.json() == []
        listing = client.get("/v1/items", params={"modality": "image", "filter": '{"n": {"gte": 0}}'})
        assert listing.status_code == 200 and listing.json() == {"items": [], "total": 0}
