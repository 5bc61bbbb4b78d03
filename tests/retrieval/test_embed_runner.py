"""`retrieval embed`: the arrays equal the model's embeddings, entries line up, shards resume, CLI checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.cli import main
from retrieval.config import defaults, load_config
from retrieval.embed import embed_source, from_dataset, from_image_folder, from_text_file, read_embeddings
from retrieval.encode import encode_images, encode_texts
from retrieval.errors import UserError
from retrieval.model import build_towers

TINY = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 16, patch_size: 8, width: 32, layers: 1, head_width: 16}",
    "model.text_cfg={context_length: 16, width: 32, heads: 2, layers: 1}",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = load_config(None, TINY)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, build_towers(config), config)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint)


def _cfg(dataset) -> dict:
    return {**defaults()["data"], **dataset.cfg()}


def test_dataset_embeddings_equal_the_model_and_rows_line_up(make_karpathy, loaded, tmp_path):
    dataset = make_karpathy({"train": 3, "test": 4}, captions=2)
    out = embed_source(loaded, from_dataset(_cfg(dataset), ["test"]), tmp_path / "emb", batch_size=3, shard_size=3,
                       progress=False)
    done = read_embeddings(out)
    paths = [str((dataset.images / e["filename"]).resolve()) for e in dataset.entries if e["split"] == "test"]
    assert [e.uri for e in done.images] == paths and done.fingerprint == loaded.fingerprint and done.dim == 16
    captions = [s["raw"] for e in dataset.entries if e["split"] == "test" for s in e["sentences"]]
    assert [t.text for t in done.texts] == captions and [t.image for t in done.texts] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert done.images[1].caption == captions[2] and done.images[1].metadata["captions"] == captions[2:4]
    np.testing.assert_allclose(done.image_vectors, encode_images(loaded, paths), atol=1e-5)
    np.testing.assert_allclose(done.text_vectors, encode_texts(loaded, captions), atol=1e-5)
    assert done.image_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(done.text_vectors, axis=1), 1.0, atol=1e-5)
    assert not (out / "shards").exists()


def test_a_rerun_resumes_finished_shards(make_karpathy, loaded, tmp_path):
    dataset = make_karpathy({"test": 5}, captions=1)
    bad = dataset.images / dataset.entries[3]["filename"]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated: the second image shard fails
    source = from_dataset(_cfg(dataset), ["test"])
    with pytest.raises(UserError, match="cannot read image"):
        embed_source(loaded, source, tmp_path / "emb", shard_size=2, progress=False)
    first = tmp_path / "emb" / "shards" / "image-00000.npy"
    assert first.is_file() and not (tmp_path / "emb" / "shards" / "image-00001.npy").exists()
    np.save(first, np.zeros((2, 16), np.float32))  # a marker: a resumed run must keep, not recompute, it
    bad.write_bytes(good)
    done = read_embeddings(embed_source(loaded, source, tmp_path / "emb", shard_size=2, progress=False))
    assert not done.image_vectors[:2].any()
    np.testing.assert_allclose(done.image_vectors[2:], encode_images(loaded, [Path(e.uri) for e in done.images[2:]]),
                               atol=1e-5)


def test_another_job_in_the_same_folder_needs_force(make_karpathy, loaded, tmp_path):
    dataset = make_karpathy({"test": 2}, captions=1)
    embed_source(loaded, from_dataset(_cfg(dataset), ["test"]), tmp_path / "emb", progress=False)
    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\n  second line  \n")
    with pytest.raises(UserError, match="--force"):
        embed_source(loaded, from_text_file(lines), tmp_path / "emb", progress=False)
    done = read_embeddings(embed_source(loaded, from_text_file(lines), tmp_path / "emb", progress=False, force=True))
    assert [t.text for t in done.texts] == ["first line", "second line"] and len(done.images) == 0
    assert done.image_vectors.shape == (0, 16)


def test_image_folder_source(tmp_path, make_karpathy):
    dataset = make_karpathy({"test": 3})
    nested = tmp_path / "folder" / "sub"
    nested.mkdir(parents=True)
    for entry in dataset.entries:
        shutil.copy(dataset.images / entry["filename"], nested / entry["filename"])
    (nested / "notes.txt").write_text("not an image")
    (nested / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="broken.png"):
        from_image_folder(tmp_path / "folder")
    source = from_image_folder(tmp_path / "folder", skip_bad=True)
    assert [Path(e.uri).name for e in source.images] == sorted(e["filename"] for e in dataset.entries)
    assert source.images[0].metadata == {"file": f"sub/{dataset.entries[0]['filename']}"}


def test_cli_embed_then_index_build(make_karpathy, checkpoint, tmp_path, capsys):
    dataset = make_karpathy({"test": 4}, captions=2)
    data_args = ["--data", str(dataset.data), "--images", str(dataset.images), "--workers", "0"]
    assert main(["embed", "--checkpoint", str(checkpoint), *data_args, "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 0
    assert "4 images, 8 texts, dim 16" in capsys.readouterr().out
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["collections"]["text"]["count"] == 8
    # Straight from a model: embeddings land in INDEX_DIR/embeddings.
    assert main(["index", "build", "--checkpoint", str(checkpoint), *data_args, "--out", str(tmp_path / "idx2"),
                 "--kind", "flat"]) == 0
    assert (tmp_path / "idx2" / "embeddings" / "image.npy").is_file()


def test_cli_rejects_ambiguous_sources(checkpoint, tmp_path, capsys):
    assert main(["embed", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert "give either --data, or --image-dir and/or --text-file" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", "d.json", "--text-file", "q.txt",
                 "--out", str(tmp_path / "o")]) == 2
    assert "give either --data" in capsys.readouterr().err
    assert main(["index", "build", "--out", str(tmp_path / "i")]) == 2
    assert main(["embed", "--checkpoint", str(checkpoint), "--text-file", str(tmp_path / "missing.txt"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "text file not found" in capsys.readouterr().err


def test_cli_embeds_an_image_folder_with_a_text_file(make_karpathy, checkpoint, tmp_path, capsys):
    """Images from a folder and texts (sample queries) from a file are one collection: both get embedded and
    indexed, so the image index is tuned on text→image queries too."""
    dataset = make_karpathy({"test": 3})
    queries = tmp_path / "queries.txt"
    queries.write_text("a red circle\n\na blue square\n", encoding="utf-8")
    assert main(["embed", "--checkpoint", str(checkpoint), "--image-dir", str(dataset.images), "--text-file",
                 str(queries), "--workers", "0", "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    assert "3 images, 2 texts" in capsys.readouterr().out
    embedded = read_embeddings(tmp_path / "emb")
    assert [e.text for e in embedded.texts] == ["a red circle", "a blue square"]
    assert embedded.text_vectors.shape == (2, 16)


@pytest.mark.slow  # two torchrun processes each import torch and open_clip
def test_torchrun_shards_by_rank_and_merges(make_karpathy, checkpoint, loaded, tmp_path):
    dataset = make_karpathy({"test": 5}, captions=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "retrieval", "embed",
               "--checkpoint", str(checkpoint), "--data", str(dataset.data), "--images", str(dataset.images),
               "--workers", "0", "--shard-size", "2", "--out", str(tmp_path / "emb"), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    done = read_embeddings(tmp_path / "emb")
    np.testing.assert_allclose(done.image_vectors, encode_images(loaded, [Path(e.uri) for e in done.images]), atol=1e-5)
    np.testing.assert_allclose(done.text_vectors, encode_texts(loaded, [t.text for t in done.texts]), atol=1e-5)
