"""EnnLinear / EnnConv2d, gradient flow to Q, Λ, P, parameter roles, autocast and caching."""

from __future__ import annotations

import inspect

import pytest
import torch
from enn_testing import assert_close_scaled
from torch import nn
from torch.nn.utils import parametrize

import enn


def test_layers_mirror_torch_signatures() -> None:
    for ours, theirs in ((enn.EnnLinear, nn.Linear), (enn.EnnConv2d, nn.Conv2d)):
        ours_params = list(inspect.signature(ours.__init__).parameters)
        theirs_params = list(inspect.signature(theirs.__init__).parameters)
        assert ours_params == theirs_params + ["ortho"]


@pytest.mark.parametrize("ortho", ["penalty", "exact", "none"])
def test_enn_layers_shapes_and_factorisation(ortho: str) -> None:
    torch.manual_seed(0)
    lin = enn.EnnLinear(10, 6, ortho=ortho)
    conv = enn.EnnConv2d(4, 8, kernel_size=3, stride=2, padding=1, groups=2, bias=False, ortho=ortho)
    assert lin(torch.randn(3, 10)).shape == (3, 6)
    assert conv(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)
    assert conv.bias is None and tuple(conv.weight.shape) == (8, 2, 3, 3)
    w = dict(enn.enn_weights(lin))["weight"]
    q, p = w.bases()
    assert tuple(q.shape) == (6, 6) and tuple(p.shape) == (10, 6) and tuple(w.lam.shape) == (6,)
    torch.testing.assert_close(lin.weight, q @ torch.diag(w.lam) @ p.T)
    assert enn.orthogonality_error(lin) < 1e-5
    # Initialised from the SVD: singular values are non-negative and sorted.
    assert torch.all(w.lam[:-1] >= w.lam[1:]) and torch.all(w.lam >= 0)


def test_gradient_reaches_q_lambda_p_with_the_right_values() -> None:
    torch.manual_seed(0)
    layer = enn.EnnLinear(7, 5)
    x = torch.randn(4, 7)
    layer(x).square().sum().backward()
    w = dict(enn.enn_weights(layer))["weight"]
    # dL/dW for L = ‖xWᵀ + b‖²; chain rule through W = Q diag(Λ) Pᵀ.
    grad_w = 2 * (x @ layer.weight.T + layer.bias).T.detach() @ x
    q, lam, p = w.Q.detach(), w.lam.detach(), w.P.detach()
    torch.testing.assert_close(w.lam.grad, torch.diagonal(q.T @ grad_w @ p), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.Q.grad, grad_w @ p * lam, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.P.grad, grad_w.T @ q * lam, rtol=1e-4, atol=1e-5)


def test_exact_mode_gradient_reaches_raw_bases() -> None:
    layer = enn.EnnLinear(6, 4, ortho="exact")
    layer(torch.randn(3, 6)).sum().backward()
    w = dict(enn.enn_weights(layer))["weight"]
    for param in (w.Q_raw, w.lam, w.P_raw):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_parameter_groups_by_role() -> None:
    model = nn.Sequential(enn.EnnLinear(4, 4), nn.LayerNorm(4), enn.EnnLinear(4, 2, ortho="exact"))
    groups = enn.parameter_groups(model)
    named = dict(model.named_parameters())
    assert {id(p) for p in groups["eigen"]} == {id(named[n]) for n in named if n.endswith(".lam")}
    assert len(groups["eigen"]) == 2 and len(groups["basis"]) == 4
    assert len(groups["other"]) == 4  # two biases + LayerNorm weight and bias
    assert sum(len(v) for v in groups.values()) == len(named)
    assert enn.parameter_role("2.parametrizations.weight.0.Q_raw") == "basis"
    assert enn.parameter_role("0.bias") == "other"


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_bf16_autocast_forward_on_cpu(ortho: str) -> None:
    torch.manual_seed(0)
    model = enn.convert(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)), ortho=ortho)
    x = torch.randn(4, 16)
    ref = model(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        penalty = enn.orthogonality_loss(model)
    assert out.dtype == torch.bfloat16
    assert_close_scaled(out.float(), ref, rel=5e-2)
    assert penalty.dtype == torch.float32 and penalty.item() < 1e-9
    out.float().sum().backward()  # and the backward runs through the bf16 graph to the factors
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cached_parametrization_for_inference() -> None:
    model = enn.convert(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    x = torch.randn(2, 8)
    ref = model(x).detach()
    with torch.no_grad(), parametrize.cached():
        assert_close_scaled(model(x), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Conv2d(1, 2, 3)).cuda()
    x = torch.randn(3, 16, device="cuda")
    ref = model[0](x).detach()
    enn.convert(model, ortho="exact")
    assert_close_scaled(model[0](x), ref)
    assert enn.orthogonality_error(model) < 1e-5


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_bfloat16_parameters(ortho: str) -> None:
    """Half-precision models (e.g. open_clip precision='pure_bf16') convert and train; QR runs in float32."""
    torch.manual_seed(0)
    layer = nn.Linear(12, 6).to(torch.bfloat16)
    x = torch.randn(3, 12, dtype=torch.bfloat16)
    ref = layer(x).detach()
    enn.convert(layer, ortho=ortho)
    w = dict(enn.enn_weights(layer))["weight"]
    assert w.lam.dtype == torch.bfloat16
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert_close_scaled(out.float(), ref.float(), rel=3e-2)
    (out.float().sum() + enn.orthogonality_loss(layer)).backward()
    assert w.lam.grad is not None and torch.isfinite(w.lam.grad).all()


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_assigning_a_plain_weight_refactorises_in_place(ortho: str) -> None:
    torch.manual_seed(0)
    layer = enn.EnnLinear(6, 4, ortho=ortho)
    w = dict(enn.enn_weights(layer))["weight"]
    lam_before = w.lam
    new_weight = torch.randn(4, 6)
    layer.weight = new_weight
    torch.testing.assert_close(layer.weight, new_weight, rtol=1e-5, atol=1e-5)
    assert w.lam is lam_before  # same Parameter objects, so an existing optimizer keeps working
    with pytest.raises(ValueError, match="expected a weight of shape"):
        layer.weight = torch.randn(6, 4)
