"""Exact mode's "untouched since retraction" shortcut: it holds only while the raw factor is bit for bit what
`retract` wrote, whatever wrote to it since (a fused optimizer, a `.data` write), and only for factors whose
retraction is orthonormal to float32/float64 rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import enn
from enn import parametrization


def _exact_layer(seed: int) -> tuple[nn.Module, enn.EnnWeight]:
    torch.manual_seed(seed)
    layer = enn.convert(nn.Linear(40, 24), ortho="exact")
    return layer, next(w for _, w in enn.enn_weights(layer))


def _count_full_qr(monkeypatch) -> list[int]:
    calls = [0]
    original = parametrization.orthonormalize

    def counting(a):
        calls[0] += 1
        return original(a)

    monkeypatch.setattr(parametrization, "orthonormalize", counting)
    return calls


def test_a_fused_adamw_step_without_the_hook_ends_the_shortcut() -> None:
    # torch's fused AdamW writes the parameters without bumping Tensor._version.
    layer, _ = _exact_layer(0)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    enn.retract(layer)
    layer(torch.randn(8, 40)).square().sum().backward()
    optimizer.step()  # no retract_after_step hook: the raw factors are far from orthonormal now
    assert enn.orthogonality_error(layer) < 1e-5


def test_a_write_through_data_ends_the_shortcut() -> None:
    layer, w = _exact_layer(1)
    enn.retract(layer)
    w.Q_raw.data.add_(0.1 * torch.randn_like(w.Q_raw))  # `.data` has its own version counter
    assert enn.orthogonality_error(layer) < 1e-5
    enn.retract(layer)
    w.P_raw.data = 2.0 * w.P_raw.data  # new storage, new values
    assert enn.orthogonality_error(layer) < 1e-5


def test_an_untouched_factor_skips_the_qr(monkeypatch) -> None:
    layer, w = _exact_layer(2)
    calls = _count_full_qr(monkeypatch)
    enn.retract(layer)
    w.bases()
    assert calls[0] == 0
    w.Q_raw.data.mul_(1.5)
    w.bases()
    assert calls[0] == 1  # Q changed, P did not


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_factors_are_never_taken_as_orthonormal(monkeypatch, dtype) -> None:
    # The retraction is computed in float32; rounding it to half precision leaves ‖QᵀQ − I‖ ≈ 1e-2.
    layer, w = _exact_layer(3)
    layer.to(dtype)
    enn.retract(layer)
    calls = _count_full_qr(monkeypatch)
    assert enn.orthogonality_error(layer) < 1e-5
    assert calls[0] == 2


def test_a_retraction_that_missed_the_rounding_bound_is_not_marked_clean(monkeypatch) -> None:
    # No Cholesky QR pass counts as near orthonormal: two passes run and the result is not vouched for.
    layer, w = _exact_layer(4)
    monkeypatch.setattr("enn.orthonormal.NEAR_ORTHONORMAL", 0.0)
    enn.retract(layer)
    calls = _count_full_qr(monkeypatch)
    w.bases()
    assert calls[0] == 2


def test_with_the_retraction_hook_a_fused_adamw_step_keeps_the_shortcut(monkeypatch) -> None:
    layer, w = _exact_layer(5)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, fused=True)
    enn.retract_after_step(optimizer, layer)
    calls = _count_full_qr(monkeypatch)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(8, 40)).square().sum().backward()
        optimizer.step()
    assert calls[0] == 2  # the first forward (the raw factors were never retracted), then none
    assert enn.orthogonality_error(layer) < 1e-5
