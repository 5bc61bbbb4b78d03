"""Helpers for the service tests: a tiny model, a small real index, and a real uvicorn server."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
import uvicorn
from PIL import Image

API_KEY = "test-key-123"
# Runs a test (and its module's `client`) once per index backend: the same API over FAISS and over Milvus Lite.
BOTH_BACKENDS = pytest.mark.parametrize("backend", ["faiss", "milvus"], indirect=True, scope="module")
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# A 1-layer ViT and text transformer: real open_clip towers, fast enough to load per test module.
TINY_MODEL = [
    "model.embed_dim=32",
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 1, head_width: 16}",
    "model.text_cfg={context_length: 16, width: 32, heads: 2, layers: 1}",
]


def write_checkpoint(path: Path, seed: int) -> str:
    """A randomly initialised tiny model saved as a real checkpoint; returns its fingerprint."""
    from retrieval.checkpoint import save_checkpoint
    from retrieval.config import load_config
    from retrieval.model import build_towers

    torch.manual_seed(seed)
    config = load_config(None, TINY_MODEL)
    return save_checkpoint(path, build_towers(config), config)


def build_test_index(out: Path, checkpoint: Path, dataset: Path, kind: str = "flat") -> Path:
    """Embed every split of a synth dataset with the checkpoint and build an index of it."""
    from retrieval.checkpoint import load_model
    from retrieval.config import defaults
    from retrieval.embed import embed_source, from_dataset, read_embeddings
    from retrieval.index import build_index

    cfg_data = {**defaults()["data"], "path": str(dataset), "images": str(dataset.parent / "images"), "workers": 0}
    embedded = embed_source(load_model(checkpoint), from_dataset(cfg_data, ["all"]), out.parent / f"{out.name}-emb",
                            batch_size=64, progress=False)
    build_index(out, read_embeddings(embedded), kind=kind)
    return out


def build_milvus_test_index(out: Path, built_index: Path, db: Path) -> Path:
    """INDEX_DIR `out` over a fresh Milvus Lite collection (file `db`) of the same embeddings as `built_index` (a
    `build_test_index` folder): the same items in the same order, so the same ids."""
    from retrieval.embed import read_embeddings
    from retrieval.index.milvus_collection import build_milvus_index

    build_milvus_index(out, read_embeddings(built_index.parent / f"{built_index.name}-emb"), str(db), "items",
                       kind="flat")
    return out


def make_settings(index_dir: Path, checkpoint: Path, **overrides):
    """Test settings (service.settings.Settings): the API key set, snapshots frequent."""
    from service.settings import Settings

    return Settings(**{"index_dir": index_dir, "checkpoint": checkpoint, "api_key": API_KEY,
                       "snapshot_interval_s": 0.5, **overrides})


def png_bytes(colour: tuple[int, int, int] = (200, 20, 20), size: tuple[int, int] = (24, 24), fmt: str = "PNG") -> bytes:
    """A small solid image encoded in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height but carries no pixel data (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    """Poll `check()` until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class LiveServer:
    """The app served by a real uvicorn on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 60, "uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
