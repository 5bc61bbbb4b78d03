"""The checkpoint format: atomic save, faithful reload, fingerprint, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.checkpoint import load_model, read_checkpoint, save_checkpoint
from retrieval.encode import encode_texts, truncated
from retrieval.errors import UserError
from retrieval.model import build_towers


def test_reload_gives_the_same_embeddings_and_fingerprint(tiny_config, tmp_path):
    towers = build_towers(tiny_config)
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    fingerprint = save_checkpoint(path, towers, tiny_config, step=7, epoch=1, metrics={"rsum": 1.0})
    loaded = load_model(tmp_path / "run")  # a run directory means its best checkpoint
    assert loaded.fingerprint == fingerprint and read_checkpoint(path)["step"] == 7
    texts = ["a red circle", "two blue squares"]
    towers.model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(towers.model.encode_text(towers.tokenizer(texts)), dim=-1)
    np.testing.assert_allclose(encode_texts(loaded, texts), expected.numpy(), atol=1e-5)
    assert not list(path.parent.glob("*.tmp"))


def test_fingerprint_changes_with_the_weights(tiny_config, tmp_path):
    towers = build_towers(tiny_config)
    first = save_checkpoint(tmp_path / "a.pt", towers, tiny_config)
    with torch.no_grad():
        towers.model.logit_scale.add_(0.5)
    assert save_checkpoint(tmp_path / "b.pt", towers, tiny_config) != first


def test_foreign_or_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a retrieval checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_truncation_is_reported(tiny_config, tmp_path):
    save_checkpoint(tmp_path / "m.pt", build_towers(tiny_config), tiny_config)
    loaded = load_model(tmp_path / "m.pt")
    assert truncated(loaded, ["short", " ".join(["word"] * 40)]) == [False, True]
