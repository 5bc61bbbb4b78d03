"""The config loader: defaults, overrides, and one-line errors before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.config import load_config, parse_overrides, save_config
from retrieval.errors import UserError


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  lr: 0.01\n  epochs: 3\nenn:\n  ortho: exact\n")
    cfg = load_config(path, ["training.lr=2e-3", "model.vision_cfg={image_size: 32}"])
    assert cfg["training"]["lr"] == pytest.approx(2e-3)
    assert cfg["training"]["epochs"] == 3
    assert cfg["enn"]["ortho"] == "exact"
    assert cfg["model"]["vision_cfg"] == {"image_size": 32}
    assert cfg["training"]["batch_size"] == load_config(None)["training"]["batch_size"]


def test_unknown_key_names_the_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learning_rate: 0.01\n  epohcs: 2\n")
    with pytest.raises(UserError, match=r"unknown config key 'training.learning_rate'"):
        load_config(path)
    with pytest.raises(UserError, match=r"did you mean 'training.epochs'"):
        load_config(None, ["training.epohcs=2"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("enn.ortho=cayley", "enn.ortho must be one of penalty, exact, none"),
        ("training.method=magic", "training.method must be one of bp, local"),
        ("model.vision_cfg={embed_dim: 64}", "disagrees with model.embed_dim"),
        ("training.batch_size=0", "training.batch_size must be a positive integer"),
        ("training", "--set expects key=value"),
    ],
)
def test_bad_values_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["training.lr=1e-3", "enn.exclude=['visual.conv1']"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


VIT_CONFIG = Path(__file__).parents[2] / "configs" / "synth-small-vit.yaml"


def test_override_values_are_yaml_typed():
    assert parse_overrides(["a.b=3", "a.c=true", "d=[1, 2]", "e=null"]) == [
        (["a", "b"], 3), (["a", "c"], True), (["d"], [1, 2]), (["e"], None)]


def test_a_dotted_override_sets_one_key_of_a_tower_config():
    """`model.vision_cfg.layers=8` deepens the configured tower; it used to replace the whole dict, so the
    run silently fell back to open_clip's 224-px defaults."""
    vit = load_config(VIT_CONFIG, ["model.vision_cfg.layers=8", "model.text_cfg.layers=8"])
    assert vit["model"]["vision_cfg"] == {**load_config(VIT_CONFIG)["model"]["vision_cfg"],
                                          "layers": 8}
    assert vit["model"]["text_cfg"]["context_length"] == 32 and vit["model"]["text_cfg"]["layers"] == 8
    # Naming the dict itself still replaces it (a different tower family).
    resnet = load_config(VIT_CONFIG, ['model.vision_cfg={"image_size": 64, "layers": [1, 1]}'])
    assert resnet["model"]["vision_cfg"] == {"image_size": 64, "layers": [1, 1]}
    with pytest.raises(UserError, match=r"unknown config key 'model.vison_cfg'"):
        load_config(None, ["model.vison_cfg.layers=8"])
