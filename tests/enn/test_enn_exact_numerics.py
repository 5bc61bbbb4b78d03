"""Exact mode's numerics: float32 orthonormalisation under half-precision autocast, and the retraction."""

from __future__ import annotations

import torch
from torch import nn

import enn


def test_bases_stay_float32_orthonormal_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    layer = enn.convert(nn.Linear(384, 384), ortho="exact")
    w = next(w for _, w in enn.enn_weights(layer))
    with torch.no_grad():
        w.Q_raw.add_(0.05 * torch.randn_like(w.Q_raw))  # away from the orthonormal start
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, _ = w.bases()  # what the forward uses
        out = layer(torch.randn(4, 384))
    assert q.dtype == torch.float32 and out.dtype == torch.bfloat16
    eye = torch.eye(q.shape[-1], dtype=torch.float64)
    assert torch.linalg.matrix_norm(q.double().mT @ q.double() - eye) < 1e-5
    assert enn.orthogonality_error(layer) < 1e-5


def test_backward_under_autocast_matches_float32() -> None:
    torch.manual_seed(1)
    a = torch.randn(64, 16, requires_grad=True)
    grad_out = torch.randn(64, 16)
    (want,) = torch.autograd.grad(enn.orthonormalize(a), a, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (got,) = torch.autograd.grad(enn.orthonormalize(a), a, grad_out)
    torch.testing.assert_close(got, want)


def test_retraction_keeps_the_output_and_makes_the_raw_factors_orthonormal() -> None:
    torch.manual_seed(2)
    layer = enn.convert(nn.Linear(20, 30), ortho="exact")
    w = next(w for _, w in enn.enn_weights(layer))
    with torch.no_grad():
        w.Q_raw.mul_(3.0).add_(0.3 * torch.randn_like(w.Q_raw))
        w.P_raw.add_(0.3 * torch.randn_like(w.P_raw))
    x = torch.randn(5, 20)
    before = layer(x).detach()
    assert enn.retract(layer) == 1
    torch.testing.assert_close(layer(x).detach(), before, rtol=1e-5, atol=1e-5)
    for raw in (w.Q_raw, w.P_raw):
        assert torch.linalg.cond(raw.detach()).item() < 1.0 + 1e-4
    penalty = enn.convert(nn.Linear(4, 4), ortho="penalty")
    assert enn.retract(penalty) == 0 and enn.retract_after_step(torch.optim.SGD(penalty.parameters()), penalty) is None


def test_long_adamw_run_keeps_raw_factors_well_conditioned_and_bases_orthonormal() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second spinning OpenMP thread costs more than it gives
    try:
        _long_adamw_run()
    finally:
        torch.set_num_threads(threads)


def _long_adamw_run() -> None:
    torch.manual_seed(3)
    model = enn.convert(nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 8)), ortho="exact")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    enn.retract_after_step(optimizer, model)
    target = nn.Linear(16, 8)
    x = torch.randn(64, 16)
    with torch.no_grad():
        y = torch.tanh(target(x)) * 3
    first = None
    for _ in range(2000):
        loss = (model(x) - y).square().mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first  # it did learn, so the factors did move
    for _, w in enn.enn_weights(model):
        for raw in (w.Q_raw, w.P_raw):
            assert torch.linalg.cond(raw.detach()).item() <= 10
    assert enn.orthogonality_error(model) <= 1e-5


def test_after_retraction_the_basis_skips_qr_until_the_raw_factor_changes() -> None:
    torch.manual_seed(4)
    layer = enn.convert(nn.Linear(24, 40), ortho="exact")
    w = next(w for _, w in enn.enn_weights(layer))
    with torch.no_grad():
        w.Q_raw.add_(0.1 * torch.randn_like(w.Q_raw))
    x = torch.randn(6, 24)
    grad_out = torch.randn(6, 40)

    def output_and_grads():
        layer.zero_grad()
        out = layer(x)
        out.backward(grad_out)
        return out.detach(), w.Q_raw.grad.clone(), w.lam.grad.clone()

    enn.retract(layer)
    fast = output_and_grads()  # the shortcut: raw factor as is, QR's backward at R = I
    w._clean.clear()
    full = output_and_grads()  # the full QR of the same (orthonormal) raw factor
    for a, b in zip(fast, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    enn.retract(layer)
    with torch.no_grad():
        w.Q_raw.add_(0.1)  # an in-place change ends the shortcut: the basis is orthonormalised again
    q, _ = w.bases()
    assert enn.orthogonality_error(layer) < 1e-5 and not torch.allclose(q, w.Q_raw)


def test_cholesky_retraction_gives_the_householder_factor() -> None:
    torch.manual_seed(5)
    a = torch.linalg.qr(torch.randn(3, 200, 64))[0] + 1e-2 * torch.randn(3, 200, 64)
    from enn.orthonormal import orthonormal_factor

    q, orthonormal = orthonormal_factor(a)
    assert orthonormal
    torch.testing.assert_close(q, enn.orthonormalize(a), rtol=1e-4, atol=1e-5)
    singular = torch.zeros(10, 4)
    singular[:4] = torch.eye(4)
    singular[:, 3] = 0  # rank-deficient: Cholesky fails, Householder still returns an orthonormal factor
    q, orthonormal = orthonormal_factor(singular)
    assert orthonormal
    assert torch.allclose(q.mT @ q, torch.eye(4), atol=1e-5)
