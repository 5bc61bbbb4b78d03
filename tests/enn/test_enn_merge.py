"""merge() and state_dict round trips: back to plain modules, same keys, same outputs, strict loads."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from enn_testing import assert_close_scaled, clip_inputs, make_clip
from torch import nn

import enn


def _encode(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = clip_inputs()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_open_clip_towers_unchanged_by_convert(clip_dir: Path, ortho: str) -> None:
    model = make_clip(clip_dir)
    ref_img, ref_txt = _encode(model)
    enn.convert(model, ortho=ortho)
    names = [n for n, _ in enn.enn_weights(model)]
    assert "visual.conv1.weight" in names
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in names
    assert "transformer.resblocks.0.attn.out_proj.weight" in names  # text tower
    assert "transformer.resblocks.1.mlp.c_fc.weight" in names
    img, txt = _encode(model)
    assert_close_scaled(img, ref_img)
    assert_close_scaled(txt, ref_txt)


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_merged_clip_is_a_plain_open_clip_model(clip_dir: Path, ortho: str) -> None:
    model = make_clip(clip_dir)
    keys_before = list(model.state_dict())
    classes_before = [type(m) for m in model.modules()]
    ref_img, ref_txt = _encode(model)
    enn.convert(model, ortho=ortho)
    # Move away from the initial weights so the check is not trivially "merge returns the original".
    with torch.no_grad():
        for _, w in enn.enn_weights(model):
            w.lam.mul_(1.1)
    trained_img, trained_txt = _encode(model)
    assert not torch.allclose(trained_img, ref_img)

    enn.merge(model)
    assert list(model.state_dict()) == keys_before
    assert [type(m) for m in model.modules()] == classes_before
    assert all(isinstance(p, nn.Parameter) and p.is_leaf for p in model.parameters())
    img, txt = _encode(model)
    assert_close_scaled(img, trained_img)
    assert_close_scaled(txt, trained_txt)

    fresh = make_clip(clip_dir, seed=123)
    fresh.load_state_dict(model.state_dict(), strict=True)
    img, txt = _encode(fresh)
    assert_close_scaled(img, trained_img)
    assert_close_scaled(txt, trained_txt)


@pytest.mark.parametrize("ortho", ["penalty", "exact", "none"])
def test_converted_state_dict_round_trips_strictly(clip_dir: Path, ortho: str) -> None:
    model = enn.convert(make_clip(clip_dir), ortho=ortho)
    with torch.no_grad():
        for _, w in enn.enn_weights(model):
            w.lam.add_(0.01)
    expected = _encode(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)

    fresh = enn.convert(make_clip(clip_dir, seed=7), ortho=ortho)
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for got, want in zip(_encode(fresh), expected, strict=True):
        assert_close_scaled(got, want)


def test_state_dict_of_other_mode_fails_strict_load() -> None:
    penalty_sd = enn.convert(nn.Linear(4, 4), ortho="penalty").state_dict()
    with pytest.raises(RuntimeError, match="Q_raw"):
        enn.convert(nn.Linear(4, 4), ortho="exact").load_state_dict(penalty_sd, strict=True)


def test_merge_keeps_requires_grad_and_leaves_plain_modules_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight.requires_grad_(False)
    enn.convert(model)
    enn.merge(model)
    assert model[0].weight.requires_grad and not model[1].weight.requires_grad
    plain = nn.Linear(2, 2)
    weight = plain.weight
    assert enn.merge(plain).weight is weight


def test_enn_linear_merges_to_plain_weight() -> None:
    torch.manual_seed(0)
    layer = enn.EnnLinear(5, 3)
    x = torch.randn(4, 5)
    ref = layer(x).detach()
    enn.merge(layer)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert_close_scaled(layer(x), ref)


def test_merging_a_deep_copy_leaves_the_original_converted() -> None:
    """torch gives a deepcopy of a parametrized module the same generated class; merge must not break it."""
    torch.manual_seed(0)
    model = enn.convert(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2)))
    x = torch.randn(3, 4)
    ref = model[0](x).detach()
    merged = enn.merge(copy.deepcopy(model))
    assert isinstance(merged[0].weight, nn.Parameter) and type(merged[0]) is nn.Linear
    assert {n for n, _ in enn.enn_weights(model)} == {"0.weight", "1.in_proj_weight", "1.out_proj.weight"}
    assert_close_scaled(model[0](x), ref)
    assert_close_scaled(merged[0](x), ref)
    # The other direction: merging the original leaves a copy converted.
    twin = copy.deepcopy(model)
    enn.merge(model)
    assert_close_scaled(twin[0](x), ref)


def test_merge_refuses_parametrizations_stacked_on_enn() -> None:
    model = enn.convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))
    nn.utils.parametrize.register_parametrization(model[1], "weight", nn.Identity())
    with pytest.raises(ValueError, match="1.weight has other parametrizations stacked"):
        enn.merge(model)
    assert {n for n, _ in enn.enn_weights(model)} == {"0.weight", "1.weight"}  # nothing half-merged
