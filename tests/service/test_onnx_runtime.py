"""`--runtime onnx`: the service encodes with ONNX Runtime towers exported from the checkpoint and serves
the index the checkpoint built (same fingerprint), with the same results as the torch runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import make_settings, png_bytes

from retrieval.errors import UserError
from retrieval.export import load_source, write_onnx_dir
from service.app import create_app
from service.onnx_encoder import OnnxEncoder


@pytest.fixture(scope="module")
def onnx_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    write_onnx_dir(load_source(checkpoint), out)
    return out


def test_onnx_runtime_serves_the_same_results_as_torch(index_dir, onnx_dir, client):
    settings = make_settings(index_dir, None, runtime="onnx", onnx_dir=onnx_dir)  # a private copy of the index
    queries = [{"text": "a red circle above a blue square", "target": "image", "k": 5},
               {"text": "a small green triangle", "target": "text", "k": 5}]
    with TestClient(create_app(settings)) as onnx_client:
        info = onnx_client.get("/v1/info").json()
        assert info["runtime"] == "onnx" and info["model"] == client.get("/v1/info").json()["model"]
        for body in queries:
            got = onnx_client.post("/v1/search", json=body).json()["results"]
            want = client.post("/v1/search", json=body).json()["results"]
            assert [h["id"] for h in got] == [h["id"] for h in want]
            np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-4)
        files = {"files": ("q.png", png_bytes(), "image/png")}
        got = np.array(onnx_client.post("/v1/embed/image", files=files).json()["embeddings"])
        want = np.array(client.post("/v1/embed/image", files=files).json()["embeddings"])
        assert float((got * want).sum()) >= 0.9999


def test_onnx_runtime_needs_its_export_folder(module_index, tmp_path):
    with pytest.raises(UserError, match="--onnx-dir"):
        OnnxEncoder.from_settings(make_settings(module_index, None, runtime="onnx"))
    with pytest.raises(UserError, match="retrieval_export.json"):
        OnnxEncoder.from_settings(make_settings(module_index, None, runtime="onnx", onnx_dir=tmp_path))
