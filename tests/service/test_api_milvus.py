"""The Milvus backend's own promises: bad flags are one clear line, a Milvus that goes away is a 503 with
Retry-After (not a 500 or a hang), and a collection of another model or dimension is refused. Milvus Lite runs
in-process (a `.db` URI) or as its own gRPC server (`milvus-lite server`), the way a real Milvus is reached."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, build_milvus_test_index, free_port, make_settings, wait_until
from test_api_durability import kill_9_mid_stream

from retrieval.cli import main
from retrieval.errors import UserError
from retrieval.index.manifest import read_manifest, write_manifest
from service.app import create_app


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A Milvus Lite gRPC server in its own process, and its URI."""
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                                str(tmp_path / "server.db"), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        from pymilvus import MilvusClient

        def up() -> bool:
            assert process.poll() is None, "milvus-lite server exited"
            try:
                MilvusClient(uri=uri, timeout=2).close()
                return True
            except Exception:
                return False

        wait_until(up, 60, "the milvus-lite server")
        yield process, uri
    finally:
        process.kill()
        process.wait(10)


def _build(built_index: Path, tmp_path: Path, uri: str, name: str = "items") -> Path:
    from retrieval.embed import read_embeddings
    from retrieval.index.milvus_collection import build_milvus_index

    build_milvus_index(tmp_path / name, read_embeddings(built_index.parent / f"{built_index.name}-emb"), uri, name,
                       kind="hnsw", timeout_s=10)
    return tmp_path / name


def test_a_milvus_that_goes_away_is_503_with_retry_after(milvus_server, built_index, checkpoint, tmp_path):
    process, uri = milvus_server
    folder = _build(built_index, tmp_path, uri)
    with TestClient(create_app(make_settings(folder, checkpoint, milvus_timeout_s=2))) as client:
        assert client.post("/v1/search", json={"text": "a red circle", "k": 3}).status_code == 200
        assert client.get("/v1/info").json()["indexes"]["image"]["kind"] == "milvus:HNSW"
        process.kill()
        process.wait(10)
        for request in (lambda: client.post("/v1/search", json={"text": "a red circle", "k": 3}),
                        lambda: client.post("/v1/items", json={"texts": ["lost"]}, headers=AUTH),
                        lambda: client.get("/v1/items/1"),
                        lambda: client.get("/v1/items", params={"filter": json.dumps({"n": 1})})):
            start = time.monotonic()
            response = request()
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] and "Milvus" in response.json()["detail"]
            assert time.monotonic() - start < 30  # bounded by the timeout, never a hang
        assert client.get("/healthz").status_code == 200


def test_serve_refuses_a_collection_of_another_model(built_index, other_checkpoint, tmp_path, capsys):
    folder = build_milvus_test_index(tmp_path / "idx", built_index, tmp_path / "items.db")
    code = main(["serve", "--index", str(folder), "--checkpoint", str(other_checkpoint), "--port", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "was built by model" in err


def test_a_manifest_naming_a_collection_of_another_dimension_is_refused(built_index, checkpoint, tmp_path):
    folder = build_milvus_test_index(tmp_path / "idx", built_index, tmp_path / "items.db")
    manifest = read_manifest(folder)
    manifest.dim = 64
    write_manifest(folder, manifest)
    from retrieval.index.backend import open_index

    with pytest.raises(UserError, match="holds 32-d vectors, this index needs 64-d"):
        open_index(folder)


@pytest.mark.parametrize(("flags", "message"), [
    (["--milvus-uri", "http://127.0.0.1:{port}"], "cannot reach Milvus at http://127.0.0.1:"),
    (["--milvus-uri", "{tmp}/lite.db", "--collection", "bad-name!"], "collection name is a letter or _"),
    (["--milvus-uri", "ftp://example"], "give a Milvus Lite file ending in .db or http(s)://host:port"),
    ([], "--backend milvus needs --milvus-uri"),
    (["--milvus-uri", "{tmp}/lite.db", "--kind", "ivfpq"], "is a FAISS kind"),
])
def test_bad_milvus_flags_are_one_clear_line(built_index, tmp_path, capsys, flags, message):
    flags = [f.format(port=free_port(), tmp=tmp_path) for f in flags]
    embeddings = built_index.parent / f"{built_index.name}-emb"
    code = main(["index", "build", "--embeddings", str(embeddings), "--out", str(tmp_path / "idx"), "--backend",
                 "milvus", "--milvus-timeout-s", "3", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow  # two server processes start (torch + model import): ~50 s on 2 busy cores
def test_kill_9_during_adds_loses_no_acknowledged_item_in_milvus_lite(built_index, checkpoint, tmp_path):
    folder = tmp_path / "idx"
    subprocess.run([sys.executable, "-m", "retrieval", "index", "build", "--embeddings",
                    str(built_index.parent / f"{built_index.name}-emb"), "--out", str(folder), "--backend", "milvus",
                    "--milvus-uri", str(tmp_path / "items.db"), "--kind", "flat"], check=True, capture_output=True)
    kill_9_mid_stream(folder, checkpoint, tmp_path / "server.log")  # Milvus Lite runs in the killed process
