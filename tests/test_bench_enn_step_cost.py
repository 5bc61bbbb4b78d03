"""bench/enn_profile.py and bench/enn_scale.py: layer kinds, tokens per layer, the cost-model fit, and a tiny run."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.chdir(ROOT)
    return importlib.import_module(name)


@pytest.fixture
def profile(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _bench(monkeypatch, "enn_profile")


@pytest.fixture
def scale(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _bench(monkeypatch, "enn_scale")


def test_demo_layers_get_their_kind_and_tokens(profile):
    import enn

    cfg = profile.load_variant_config(profile.DEMO_CONFIG, "penalty")
    model = profile.TrainerStep(cfg, profile.random_batch(cfg, 2)).model
    kinds = {name: profile.layer_kind(model, name) for name, _ in enn.enn_weights(model)}
    assert kinds["visual.layer1.0.conv2.weight"] == "conv"
    assert kinds["visual.attnpool.q_proj.weight"] == "attn_in"
    assert kinds["visual.attnpool.c_proj.weight"] == "attn_out"
    assert kinds["transformer.resblocks.0.attn.in_proj_weight"] == "attn_in"
    assert kinds["transformer.resblocks.0.attn.out_proj.weight"] == "attn_out"
    assert kinds["transformer.resblocks.0.mlp.c_fc.weight"] == "linear"
    tokens = profile.tokens_per_batch(model, *profile.random_batch(cfg, 2))
    assert tokens["transformer.resblocks.0.mlp.c_fc.weight"] == 2 * 32  # batch × context length
    assert tokens["visual.layer4.0.conv2.weight"] == 2 * 4 * 4  # batch × positions (stride: pooled after it)
    assert tokens["visual.layer4.0.conv3.weight"] == 2 * 2 * 2
    assert tokens["visual.attnpool.k_proj.weight"] == 2 * (2 * 2 + 1)  # the pool prepends its mean token


def test_line_fit_and_crossover(scale):
    slope, intercept = scale.fit_line([1, 2, 3], [5, 7, 9])
    assert slope == pytest.approx(2) and intercept == pytest.approx(3)
    assert scale.fit_line([4, 4], [1, 3]) == (0.0, 2.0)
    # extra 10 ms, plain 0.5 ms/sample + 20 ms: 5 % of plain is 10 ms at batch 360
    assert scale.crossover_batch(10.0, (0.5, 20.0), 0.05) == pytest.approx(360)
    assert scale.crossover_batch(10.0, (0.0, 20.0), 0.05) is None


def test_width_overrides_keep_the_head_size(scale):
    cfg = scale.harness.load_variant_config(scale.harness.DEMO_CONFIG, "plain")
    wide = scale.harness.load_variant_config(scale.harness.DEMO_CONFIG, "plain", scale.width_overrides(cfg, 2))
    assert wide["model"]["vision_cfg"]["width"] == 2 * cfg["model"]["vision_cfg"]["width"]
    text, text2 = cfg["model"]["text_cfg"], wide["model"]["text_cfg"]
    assert text2["width"] // text2["heads"] == text["width"] // text["heads"]


def test_a_tiny_scale_run_fits_the_cost_model(scale):
    torch.set_num_threads(1)
    points = scale.measure(ROOT / "configs" / "synth-tiny.yaml", [1, 2], [4, 8], ["penalty"], runs=1, warmup=0,
                           extra=[])
    assert [(p["width"], p["batch"]) for p in points] == [(1, 4), (1, 8), (2, 4), (2, 8)]
    assert points[2]["mnr"] > points[0]["mnr"]
    model = scale.cost_model(points, ["penalty"], 0.05)
    assert set(model["crossover_batch"]["penalty"]) == {1, 2}
