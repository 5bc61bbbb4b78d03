"""orthogonality_loss / orthogonality_error and the "exact" mode's guarantee."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import enn
from enn.orthogonality import _GramPenalty, gram_penalty
from enn.orthonormal import gram


def _model(ortho: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 24), nn.Conv2d(3, 5, 3, groups=1))
    return enn.convert(model, ortho=ortho)


def test_penalty_is_zero_at_init_and_positive_after_perturbation() -> None:
    model = _model("penalty")
    assert enn.orthogonality_loss(model).item() < 1e-9
    assert enn.orthogonality_error(model) < 1e-5
    with torch.no_grad():
        next(w for _, w in enn.enn_weights(model)).Q.add_(0.05)
    assert enn.orthogonality_loss(model).item() > 1e-3
    assert enn.orthogonality_error(model) > 1e-2


def test_the_error_monitor_records_no_autograd_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer calls it every log step on trainable factors: a float64 Gram with a graph would be pure waste."""
    import enn.orthogonality as orthogonality

    seen, deviation = [], orthogonality._gram_deviation

    def recording(a: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return deviation(a)

    monkeypatch.setattr(orthogonality, "_gram_deviation", recording)
    enn.orthogonality_error(_model("penalty"))
    assert seen and not any(seen)


def test_penalty_leaves_out_frozen_weights() -> None:
    """A locked tower's factors get no gradient: their term is a constant, so it is not computed at all."""
    model = _model("penalty")
    with torch.no_grad():
        for _, w in enn.enn_weights(model):
            w.Q.add_(0.05)
    full = enn.orthogonality_loss(model).item()
    first = model[0]
    for p in first.parameters():
        p.requires_grad_(False)
    partial = enn.orthogonality_loss(model)
    assert 0 < partial.item() < full
    assert partial.requires_grad


def test_penalty_matches_its_definition_and_autograd() -> None:
    model = _model("penalty")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss = enn.orthogonality_loss(model)
    loss.backward()

    expected = 0.0
    for _, w in enn.enn_weights(model):
        for basis in (w.Q, w.P):
            eye = torch.eye(basis.shape[-1])
            expected = expected + torch.linalg.matrix_norm(basis.detach().mT @ basis.detach() - eye) ** 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    w = next(w for _, w in enn.enn_weights(model))
    q = w.Q.detach().clone().requires_grad_(True)
    ((q.mT @ q - torch.eye(q.shape[-1])) ** 2).sum().backward()
    torch.testing.assert_close(w.Q.grad, q.grad)


def test_hand_written_penalty_gradient_passes_gradcheck() -> None:
    a = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)  # a batch of blocks
    assert torch.autograd.gradcheck(_GramPenalty.apply, (a,))


@pytest.mark.parametrize("ortho", ["exact", "none"])
def test_loss_is_exactly_zero_outside_penalty_mode(ortho: str) -> None:
    model = _model(ortho)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert enn.orthogonality_loss(model).item() == 0.0


def test_error_is_zero_for_a_model_without_enn_weights() -> None:
    plain = nn.Linear(3, 3)
    assert enn.orthogonality_error(plain) == 0.0
    assert enn.orthogonality_loss(plain).item() == 0.0


def test_exact_mode_stays_orthonormal_under_aggressive_adamw() -> None:
    torch.manual_seed(0)
    model = _model("exact")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(16, 24)
    target = torch.randn(16, 24)
    start = {n: w().detach().clone() for n, w in enn.enn_weights(model)}
    for _ in range(100):
        opt.zero_grad()
        loss = (model[:3](x) - target).square().mean()
        loss.backward()
        opt.step()
    moved = max((w().detach() - start[n]).abs().max().item() for n, w in enn.enn_weights(model))
    assert moved > 0.1  # the weights really trained
    assert enn.orthogonality_error(model) <= 1e-5


def test_penalty_mode_drifts_without_penalty_and_penalty_pulls_back() -> None:
    """The penalty does its job: training with it ends more orthonormal than training without it."""
    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = _model("penalty")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x, target = torch.randn(16, 24), torch.randn(16, 24)
        for _ in range(50):
            opt.zero_grad()
            loss = (model[:3](x) - target).square().mean() + weight * enn.orthogonality_loss(model)
            loss.backward()
            opt.step()
        errors[weight] = enn.orthogonality_error(model)
    assert errors[1.0] < 0.5 * errors[0.0]


def test_orthonormalize_gradient_matches_generic_qr_and_passes_gradcheck() -> None:
    a = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enn.orthonormalize, (a,))
    grad_out = torch.randn(2, 9, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(enn.orthonormalize(a), a, grad_out)
    q, r = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    (reference,) = torch.autograd.grad(q * sign, a, grad_out)
    torch.testing.assert_close(ours, reference)
    q_ours = enn.orthonormalize(a).detach()
    torch.testing.assert_close(q_ours, (q * sign).detach())
    torch.testing.assert_close(q_ours.mT @ q_ours, torch.eye(5, dtype=torch.float64).expand(2, 5, 5))


def test_exact_bases_are_orthonormal_to_float32_precision_at_product_sizes() -> None:
    """Plain float32 QR leaves ‖QᵀQ−I‖_F ≈ 1e-5 at r = 256; the refined factor must stay well below."""
    torch.manual_seed(0)
    layer = enn.convert(nn.Linear(256, 1024), ortho="exact")
    w = dict(enn.enn_weights(layer))["weight"]
    with torch.no_grad():
        w.Q_raw.add_(0.05 * torch.randn_like(w.Q_raw))  # far from orthonormal, like after training
    assert enn.orthogonality_error(layer) < 5e-6


@pytest.mark.parametrize("shape", [(512, 512), (2, 700, 300), (1152, 129)])
def test_blockwise_gram_equals_the_full_product(shape: tuple[int, ...]) -> None:
    torch.manual_seed(6)
    a = torch.randn(*shape)
    torch.testing.assert_close(gram(a), a.mT @ a, rtol=1e-5, atol=1e-4)


def test_penalty_gradient_at_a_blockwise_gram_size_matches_autograd() -> None:
    torch.manual_seed(7)
    a = (torch.linalg.qr(torch.randn(2, 400, 300))[0] + 0.01 * torch.randn(2, 400, 300)).requires_grad_(True)
    gram_penalty(a).backward()
    b = a.detach().clone().requires_grad_(True)
    want = ((b.mT @ b - torch.eye(300)) ** 2).sum()
    want.backward()
    torch.testing.assert_close(gram_penalty(a.detach()), want.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
