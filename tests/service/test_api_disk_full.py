"""A full disk during adds: 507 with Retry-After, nothing acknowledged that is not stored, reads go on, and
writes work again once space is freed — on a real full filesystem (a small tmpfs, so this needs root)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, make_settings, png_bytes

from service.app import create_app


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """An 8 MiB tmpfs mounted for the test."""
    return tmpfs("8m")


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_writes_cleanly_and_recovers(small_disk, built_index, checkpoint):
    index = Path(shutil.copytree(built_index, small_disk / "idx"))
    settings = make_settings(index, checkpoint, snapshot_interval_s=3600)
    texts = [f"caption number {n} written while the disk is full" for n in range(200)]
    with TestClient(create_app(settings)) as client:
        before = client.get("/v1/items").json()["total"]
        kept = client.post("/v1/items", json={"texts": ["added before the disk filled up"]}, headers=AUTH).json()["ids"]
        filler = _fill(small_disk)

        refused = client.post("/v1/items", json={"texts": texts}, headers=AUTH)
        assert refused.status_code == 507, refused.text
        assert "disk is full" in refused.json()["detail"] and refused.headers["retry-after"]
        image = client.post("/v1/items", files={"files": ("a.png", png_bytes(size=(200, 200)), "image/png")},
                            headers=AUTH)
        assert image.status_code == 507, image.text

        assert client.get("/v1/items").json()["total"] == before + 1  # nothing half-added
        assert client.post("/v1/search", json={"text": texts[0], "target": "text", "k": 3}).status_code == 200
        assert client.get(f"/v1/items/{kept[0]}").status_code == 200

        filler.unlink()
        recovered = client.post("/v1/items", json={"texts": texts}, headers=AUTH)
        assert recovered.status_code == 200, recovered.text
    with TestClient(create_app(settings)) as client:  # everything acknowledged is there after a restart
        assert client.get("/v1/items").json()["total"] == before + 1 + len(texts)
        top = client.post("/v1/search", json={"text": texts[5], "target": "text", "k": 1}).json()["results"][0]
        assert top["id"] == recovered.json()["ids"][5]
    assert not list(index.glob(".*.tmp")) and not list((index / "images").glob(".*.tmp"))
