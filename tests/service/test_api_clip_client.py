"""clip-retrieval's own `ClipClient`, unchanged, against a real uvicorn server."""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_testing import LiveServer, make_settings

from retrieval.store import ItemStore
from service.app import create_app


def _clip_client_module():
    """clip_client.py loaded by path (the package __init__ imports heavy deps that are not installed)."""
    path = Path(sysconfig.get_paths()["purelib"]) / "clip_retrieval" / "clip_client.py"
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(module_index, checkpoint):
    with LiveServer(create_app(make_settings(module_index, checkpoint))) as live:
        yield live


def test_indices_list_names_the_index(server, module_index):
    assert httpx.get(f"{server.url}/indices-list").json() == [module_index.name]


def test_text_image_and_embedding_queries(server, module_index):
    clip = _clip_client_module()
    client = clip.ClipClient(url=f"{server.url}/knn-service", indice_name=module_index.name, num_images=5,
                             deduplicate=False)
    by_text = client.query(text="a red circle")
    assert len(by_text) == 5 and {"id", "similarity", "caption", "url"} <= set(by_text[0])
    assert [r["similarity"] for r in by_text] == sorted((r["similarity"] for r in by_text), reverse=True)
    image_bytes = httpx.get(by_text[0]["url"]).content  # the url serves the image
    assert image_bytes[:8] == b"\x89PNG\r\n\x1a\n"

    store = ItemStore(module_index / "items.sqlite")
    first = int(store.ids("image")[0])
    by_image = client.query(image=store.get([first])[first].uri)
    assert by_image[0]["id"] == first and abs(by_image[0]["similarity"] - 1.0) < 1e-4

    vector = store.embeddings_of([first])[0].tolist()
    by_embedding = client.query(embedding_input=vector)
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_image]

    captions = clip.ClipClient(url=f"{server.url}/knn-service", indice_name=module_index.name,
                               modality=clip.Modality.TEXT, num_images=3, deduplicate=False).query(text="a shape")
    assert len(captions) == 3 and all(r["url"].endswith("/image") for r in captions)  # a caption's image


def test_deduplicate_drops_near_identical_results(server, module_index):
    clip = _clip_client_module()
    plain = clip.ClipClient(url=f"{server.url}/knn-service", indice_name=module_index.name, num_images=30,
                            deduplicate=False).query(text="a blue square")
    deduplicated = clip.ClipClient(url=f"{server.url}/knn-service", indice_name=module_index.name,
                                   num_images=30).query(text="a blue square")
    store = ItemStore(module_index / "items.sqlite")

    def near_pairs(results) -> int:
        vectors = store.embeddings_of([r["id"] for r in results])
        similarity = vectors @ vectors.T
        return int((similarity[~np.eye(len(vectors), dtype=bool)] > 0.94 + 1e-6).sum())

    assert near_pairs(deduplicated) == 0 and deduplicated[0]["id"] == plain[0]["id"]
    assert near_pairs(plain) > 0 and len(deduplicated) < len(plain)  # a random tiny model has near-duplicates
