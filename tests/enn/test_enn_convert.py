"""convert(): outputs unchanged for every supported layer kind, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from enn_testing import assert_close_scaled
from torch import nn
from torch.nn.utils import parametrize

import enn

MODES = ("penalty", "exact", "none")


@pytest.mark.parametrize("ortho", MODES)
def test_linear_output_unchanged(ortho: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 20)
    x = torch.randn(7, 48)
    ref = layer(x).detach()
    enn.convert(layer, ortho=ortho)
    assert parametrize.is_parametrized(layer, "weight")
    assert_close_scaled(layer(x), ref)


@pytest.mark.parametrize("ortho", MODES)
@pytest.mark.parametrize(
    ("cin", "cout", "groups"), [(6, 10, 1), (6, 10, 2), (8, 8, 8)], ids=["dense", "groups2", "depthwise"]
)
def test_conv2d_output_unchanged(ortho: str, cin: int, cout: int, groups: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
    x = torch.randn(2, cin, 9, 9)
    ref = conv(x).detach()
    enn.convert(conv, ortho=ortho)
    w = next(p for _, p in enn.enn_weights(conv))
    assert w.blocks == groups
    if groups > 1:  # one factorisation per group: (groups, out/groups, r)
        assert w.lam.shape[0] == groups
    assert_close_scaled(conv(x), ref)


def test_grouped_conv_is_block_diagonal_per_group() -> None:
    """Changing group 0's factors must leave the outputs of group 1's channels untouched."""
    torch.manual_seed(0)
    conv = enn.convert(nn.Conv2d(4, 6, 3, groups=2))
    x = torch.randn(1, 4, 5, 5)
    before = conv(x).detach()
    w = next(p for _, p in enn.enn_weights(conv))
    with torch.no_grad():
        w.lam[0] *= 2.0
    after = conv(x).detach()
    assert torch.allclose(after[:, 3:], before[:, 3:])
    assert not torch.allclose(after[:, :3], before[:, :3])


@pytest.mark.parametrize("ortho", MODES)
@pytest.mark.parametrize("same_dim", [True, False], ids=["packed", "separate_kv_dims"])
def test_multihead_attention_output_unchanged(ortho: str, same_dim: bool) -> None:
    torch.manual_seed(0)
    kv_dim = None if same_dim else 12
    mha = nn.MultiheadAttention(16, 4, batch_first=True, kdim=kv_dim, vdim=kv_dim)
    q = torch.randn(2, 5, 16)
    kv = torch.randn(2, 6, kv_dim or 16)
    ref = mha(q, kv, kv)[0].detach()
    enn.convert(mha, ortho=ortho)
    names = {n for n, _ in enn.enn_weights(mha)}
    expected = {"in_proj_weight"} if same_dim else {"q_proj_weight", "k_proj_weight", "v_proj_weight"}
    assert names == expected | {"out_proj.weight"}
    assert_close_scaled(mha(q, kv, kv)[0], ref)
    # The eval/no-grad fast path of nn.MultiheadAttention reads the parametrized weights as well.
    mha.eval()
    with torch.no_grad():
        assert_close_scaled(mha(q, kv, kv)[0], ref)


def test_packed_in_projection_is_split_into_q_k_v() -> None:
    mha = enn.convert(nn.MultiheadAttention(16, 2))
    w = dict(enn.enn_weights(mha))["in_proj_weight"]
    assert w.blocks == 3 and tuple(w.Q.shape) == (3, 16, 16)


def test_norms_embeddings_biases_stay_plain() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.BatchNorm1d(8))
    enn.convert(model)
    converted = {n for n, _ in enn.enn_weights(model)}
    assert converted == {"2.weight"}
    assert isinstance(model[0].weight, nn.Parameter) and isinstance(model[2].bias, nn.Parameter)


def test_exclude_globs_keep_subtrees_plain() -> None:
    model = nn.Sequential()
    model.add_module("enc", nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))
    model.add_module("head", nn.Linear(4, 2))
    enn.convert(model, exclude=["enc"])
    assert {n for n, _ in enn.enn_weights(model)} == {"head.weight"}
    model2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    enn.convert(model2, exclude="1")  # a single glob string is one pattern, not characters
    assert {n for n, _ in enn.enn_weights(model2)} == {"0.weight"}


def test_convert_twice_same_mode_is_a_no_op_and_other_mode_refused() -> None:
    layer = enn.convert(nn.Linear(4, 4))
    lam = next(p for _, p in enn.enn_weights(layer)).lam
    enn.convert(layer)
    assert next(p for _, p in enn.enn_weights(layer)).lam is lam
    with pytest.raises(ValueError, match="already ENN with ortho='penalty'"):
        enn.convert(layer, ortho="exact")


def test_bad_ortho_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match="'penalty', 'exact', 'none'"):
        enn.convert(nn.Linear(3, 3), ortho="cayley")
    with pytest.raises(ValueError, match="unknown ortho mode"):
        enn.EnnLinear(3, 3, ortho="bogus")


def test_nothing_to_convert_is_an_error() -> None:
    with pytest.raises(ValueError, match="no Linear, Conv2d or MultiheadAttention"):
        enn.convert(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    with pytest.raises(ValueError, match="outside exclude"):
        enn.convert(nn.Sequential(nn.Linear(2, 2)), exclude=["*"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        enn.convert(torch.zeros(3))


def test_tied_weights_refused_and_module_left_untouched() -> None:
    emb, head = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(nn.Linear(6, 6), emb, head)
    with pytest.raises(ValueError, match="2.weight is tied to 1.weight"):
        enn.convert(model)
    assert not parametrize.is_parametrized(model[0])  # validated before anything was changed


def test_foreign_parametrization_refused() -> None:
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="already has a parametrization"):
        enn.convert(layer)


def test_integer_weight_refused() -> None:
    layer = nn.Linear(4, 4)
    layer.weight = nn.Parameter(torch.ones(4, 4, dtype=torch.int64), requires_grad=False)
    with pytest.raises(ValueError, match="floating-point"):
        enn.convert(layer)
