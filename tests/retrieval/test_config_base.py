"""`base:` in a run config: a variant names the config it starts from and writes only what differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.config import load_config
from retrieval.errors import UserError

BASE = """\
model:
  embed_dim: 64
  vision_cfg: {image_size: 64, layers: [1, 1, 1, 1], width: 16}
enn:
  ortho: exact
training:
  lr: 0.01
  epochs: 3
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    return path


def test_a_variant_is_its_base_with_its_own_keys_on_top(base, tmp_path, monkeypatch):
    variant = tmp_path / "variants" / "longer.yaml"
    variant.parent.mkdir()
    variant.write_text("base: ../base.yaml  # relative to this file\ntraining:\n  epochs: 5\n")
    monkeypatch.chdir(variant.parent.parent.parent)  # not the config's folder
    cfg = load_config(variant)
    assert (cfg["training"]["lr"], cfg["training"]["epochs"], cfg["enn"]["ortho"]) == (0.01, 5, "exact")
    assert cfg["model"]["vision_cfg"] == {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}
    assert cfg == load_config(base, ["training.epochs=5"])


def test_a_chain_of_bases_applies_oldest_first_and_overrides_last(base, tmp_path):
    (tmp_path / "plain.yaml").write_text("base: base.yaml\nenn:\n  enabled: false\ntraining:\n  lr: 0.02\n")
    (tmp_path / "short.yaml").write_text("base: plain.yaml\ntraining:\n  epochs: 1\n")
    cfg = load_config(tmp_path / "short.yaml", ["training.epochs=2"])
    assert (cfg["enn"]["enabled"], cfg["enn"]["ortho"]) == (False, "exact")
    assert (cfg["training"]["lr"], cfg["training"]["epochs"], cfg["model"]["embed_dim"]) == (0.02, 2, 64)


def test_a_tower_config_is_replaced_whole_not_merged(base, tmp_path):
    (tmp_path / "vit.yaml").write_text("base: base.yaml\nmodel:\n  vision_cfg: {image_size: 64, patch_size: 8}\n")
    cfg = load_config(tmp_path / "vit.yaml")
    assert cfg["model"]["vision_cfg"] == {"image_size": 64, "patch_size": 8}  # no ResNet `layers` left over
    assert cfg["model"]["embed_dim"] == 64


@pytest.mark.parametrize(("text", "message"), [
    ("base: nowhere.yaml\n", r"config file not found: .*nowhere.yaml \(the base of .*variant.yaml\)"),
    ("base: variant.yaml\n", r"variant.yaml: base 'variant.yaml' leads back to .*\(a loop\)"),
    ("base: [base.yaml]\n", r"base must name a config file"),
    ("base: base.yaml\ntraining:\n  epohcs: 2\n", r"unknown config key 'training.epohcs'"),
])
def test_bad_bases_are_refused_naming_the_file(base, tmp_path, text, message):
    (tmp_path / "variant.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / "variant.yaml")


def test_a_loop_through_two_files_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(UserError, match="a loop"):
        load_config(tmp_path / "a.yaml")
