"""Service fixtures: tiny real checkpoints, a small real index built from a synth dataset, a live app."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_testing import build_milvus_test_index, build_test_index, make_settings, write_checkpoint

from service.app import create_app


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model (a valid checkpoint for load_model)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    write_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, other weights: another fingerprint."""
    path = tmp_path_factory.mktemp("ckpt") / "other.pt"
    write_checkpoint(path, seed=1)
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-image synth dataset (Karpathy JSON + PNGs)."""
    from retrieval.data.synth.generate import generate

    return generate(tmp_path_factory.mktemp("data") / "synth", n_images=30, seed=5, size=32, workers=1, progress=False)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, dataset: Path) -> Path:
    """The dataset's images and captions indexed with the tiny model (built once; copy before writing)."""
    return build_test_index(tmp_path_factory.mktemp("index") / "synth", checkpoint, dataset)


@pytest.fixture
def index_dir(built_index: Path, tmp_path: Path) -> Path:
    """A private copy of the built index, free to modify."""
    return Path(shutil.copytree(built_index, tmp_path / "synth"))


@pytest.fixture(scope="module")
def module_index(built_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built index shared by one test module."""
    return Path(shutil.copytree(built_index, tmp_path_factory.mktemp("module") / "synth"))


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    """The index backend `client` serves: faiss, unless a test is parametrised with `BOTH_BACKENDS`."""
    return getattr(request, "param", "faiss")


@pytest.fixture(scope="module")
def served_index(backend: str, module_index: Path, built_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index folder `client` serves: the module's FAISS copy, or a Milvus Lite collection of the same items (same
    ids and vectors, so `module_index`'s store still tells what the right answers are)."""
    if backend == "faiss":
        return module_index
    folder = tmp_path_factory.mktemp("milvus")
    return build_milvus_test_index(folder / "synth", built_index, folder / "items.db")


@pytest.fixture(scope="module")
def client(served_index: Path, checkpoint: Path) -> Iterator[TestClient]:
    """The real app (lifespan run: model and index loaded) on a module-private index copy."""
    with TestClient(create_app(make_settings(served_index, checkpoint))) as test_client:
        yield test_client
