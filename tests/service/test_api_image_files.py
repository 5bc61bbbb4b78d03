"""GET /v1/items/{id}/image serves only images the service stored (images/) and files under the image roots the
index was built from, resolved (`..`, symlinks) before the check; every other uri is external (404), and a uri
naming a file of the index folder is refused when an item is added."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, make_settings, png_bytes

from retrieval.store import ItemStore, NewItem
from service.app import create_app


@pytest.fixture
def served(index_dir: Path, checkpoint: Path, tmp_path: Path):
    """An index whose recorded image root is `root`, with a secret image and a secret folder outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "ok.png").write_bytes(png_bytes((1, 2, 3)))
    (root / "notes.txt").write_text("not an image")
    (outside / "secret.png").write_bytes(png_bytes((9, 9, 9)))
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (index_dir / "stray.png").write_bytes(png_bytes((5, 5, 5)))  # in the index folder, outside images/
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["image_roots"] = [str(root)]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    return index_dir, root, outside, checkpoint


def _add_rows(index_dir: Path, uris: list[str]) -> list[int]:
    """Rows as a build (or an older version) writes them: the uri is stored as given."""
    store = ItemStore(index_dir / "items.sqlite")
    vector = np.ones(store.dim, np.float32) / np.sqrt(store.dim)
    try:
        return store.add([NewItem("image", vector, None, uri, {}) for uri in uris])
    finally:
        store.close()


def test_only_files_under_the_roots_and_uploads_are_served(served):
    index_dir, root, outside, checkpoint = served
    allowed = [str(root / "ok.png"), str(root / "sub" / ".." / "ok.png")]
    refused = [
        str(root / ".." / "outside" / "secret.png"), str(root / "link.png"), str(root / "dirlink" / "secret.png"),
        str(outside / "secret.png"), "/etc/passwd", str(root / "notes.txt"), str(root / "missing.png"),
        str(index_dir / "items.sqlite"), str(index_dir / "manifest.json"), str(index_dir / "stray.png"),
        "images/../items.sqlite", "images/../stray.png", "images/../../outside/secret.png", "images/%2e%2e/items.sqlite",
        "images\\..\\items.sqlite", "..\\items.sqlite", "../outside/secret.png", "items.sqlite", "stray.png",
        f"file://{root}/ok.png", f"file:{root / 'ok.png'}", "x:/../items.sqlite", "y:/../manifest.json",
        "x:/../stray.png", "https://example.com/ok.png", "/example.com/../..",
    ]
    ids = _add_rows(index_dir, allowed + refused)
    with TestClient(create_app(make_settings(index_dir, checkpoint))) as client:
        for item_id, uri in zip(ids, allowed + refused, strict=True):
            response = client.get(f"/v1/items/{item_id}/image")
            if uri in allowed:
                assert response.status_code == 200, (uri, response.text)
                assert response.content == (root / "ok.png").read_bytes()
            else:
                assert response.status_code == 404, (uri, response.status_code)
                assert "external" in response.json()["detail"], uri
        upload = client.post("/v1/items", files={"files": ("u.png", png_bytes((7, 7, 7)), "image/png")}, headers=AUTH)
        served_upload = client.get(f"/v1/items/{upload.json()['ids'][0]}/image")
        assert served_upload.status_code == 200 and served_upload.content == png_bytes((7, 7, 7))


def test_a_root_that_holds_the_index_folder_still_never_serves_its_files(served):
    index_dir, root, _, checkpoint = served
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["image_roots"] = [str(index_dir.parent)]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    (index_dir / "images").mkdir(exist_ok=True)
    (index_dir / "images" / "kept.png").write_bytes(png_bytes((3, 3, 3)))
    uris = [str(index_dir / "stray.png"), str(index_dir / "items.sqlite"), str(index_dir / "images" / "kept.png")]
    ids = _add_rows(index_dir, uris)
    with TestClient(create_app(make_settings(index_dir, checkpoint))) as client:
        codes = [client.get(f"/v1/items/{item_id}/image").status_code for item_id in ids]
    assert codes == [404, 404, 200]


def test_an_index_built_before_roots_were_recorded_serves_its_built_images(served):
    index_dir, _, _, checkpoint = served
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["image_roots"]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(make_settings(index_dir, checkpoint))) as client:
        first = client.get("/v1/items", params={"modality": "image", "limit": 1}).json()["items"][0]
        assert os.path.isabs(first["uri"])
        assert client.get(f"/v1/items/{first['id']}/image").status_code == 200


def test_a_uri_naming_a_file_of_the_index_folder_is_refused_at_add_time(served):
    index_dir, root, _, checkpoint = served
    shutil.copy(root / "ok.png", index_dir / "images.png")
    naming = ["x:/../items.sqlite", "y:/../manifest.json", "x:/..%2Fitems.sqlite", "x:\\..\\items.sqlite",
              f"file://{index_dir}/items.sqlite", f"file:{index_dir}/manifest.json", "z:/%2E%2E/images.png",
              f"file://{index_dir}", "x:/.."]
    with TestClient(create_app(make_settings(index_dir, checkpoint))) as client:
        dim = client.get("/v1/info").json()["dim"]
        before = client.get("/v1/items", params={"limit": 1}).json()["total"]
        for uri in naming:
            body = {"items": [{"modality": "image", "uri": uri, "embedding": [1.0] * dim}]}
            response = client.post("/v1/items", json=body, headers=AUTH)
            assert response.status_code == 422, (uri, response.text)
            assert response.json()["errors"][0]["field"] == "items[0].uri"
        assert client.get("/v1/items", params={"limit": 1}).json()["total"] == before
        fine = client.post("/v1/items", json={"items": [{"modality": "image", "uri": "https://example.com/a.jpg",
                                                         "embedding": [1.0] * dim}]}, headers=AUTH)
        assert fine.status_code == 200, fine.text
        item_id = fine.json()["ids"][0]
        assert client.get(f"/v1/items/{item_id}").json()["uri"] == "https://example.com/a.jpg"
        assert client.get(f"/v1/items/{item_id}/image").status_code == 404
