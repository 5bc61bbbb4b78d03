"""Orthogonality penalty (the published ENN regulariser), a monitoring metric, and exact mode's retraction."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from enn.orthonormal import gram
from enn.parametrization import enn_weights


def _gram_deviation(a: Tensor) -> Tensor:
    """AᵀA − I for a matrix or a batch of matrices (…, n, r); the identity subtracted in place on the diagonal."""
    dev = gram(a)
    dev.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    return dev


class _GramPenalty(torch.autograd.Function):
    """‖AᵀA − I‖²_F summed over a batch, with a hand-written backward.

    d/dA = 4·A·(AᵀA − I) (the deviation is symmetric), so the backward is one n·r² matmul instead of the two
    that autograd would spend differentiating AᵀA; the forward's Gram product forms each off-diagonal block
    once (`gram`). The factor 4·grad scales the r×r deviation, not the n×r product.
    """

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:
        dev = _gram_deviation(a)
        ctx.save_for_backward(a, dev)
        return torch.linalg.vector_norm(dev).square()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        a, dev = ctx.saved_tensors
        return a @ (dev * (4.0 * grad))


def gram_penalty(a: Tensor) -> Tensor:
    """‖AᵀA − I‖²_F summed over a batch of matrices (…, n, r), in float32 with autocast off: one factor's term."""
    with torch.autocast(a.device.type, enabled=False):
        return _GramPenalty.apply(a.float())


def orthogonality_loss(module: nn.Module) -> Tensor:
    """Σ over ENN weights in "penalty" mode of ‖QᵀQ−I‖²_F + ‖PᵀP−I‖²_F, to add (×λ) to the training loss.

    Weights in "exact" mode (orthonormal by construction) and "none" mode (ablation) contribute 0, so a
    trainer can always add it; so do frozen weights (a locked tower), which no gradient could change. Computed in float32 with autocast off: in bf16 the rounding noise of QᵀQ
    would swamp the small deviations the penalty is meant to control.
    """
    terms = []
    for _, w in enn_weights(module):
        if w.ortho != "penalty" or not (w.Q.requires_grad or w.P.requires_grad):
            continue  # a frozen (locked) factor pair: its constant term would only cost time
        terms.append(gram_penalty(w.Q) + gram_penalty(w.P))
    if terms:
        return torch.stack(terms).sum()
    param = next(module.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


def lazy_penalty_weight(lam: float, every: int, step: int) -> float:
    """The penalty's weight at optimizer step `step` (0-based: the backprop trainer's global step, or an ENN-ℓ
    unit's own count): k·λ on every k-th step, 0 between.

    Lazy regularisation, as StyleGAN2 evaluates its R1 term once per 16 minibatches scaled by 16: the
    penalty keeps Q and P near the Stiefel manifold, a slow drift that a k-times-stronger pull every k steps
    holds as well, while its cost (two n·r² products per factor, ~10 % of an ENN step on the demo model) falls
    k-fold.
    """
    return lam * every if lam and step % every == 0 else 0.0


@torch.no_grad()
def orthogonality_error(module: nn.Module) -> float:
    """max over ENN weights (and blocks) of max(‖QᵀQ−I‖_F, ‖PᵀP−I‖_F), for monitoring; 0.0 when none."""
    worst = 0.0
    for _, w in enn_weights(module):
        for basis in w.bases():
            dev = _gram_deviation(basis.double())  # float64 so the metric adds no rounding of its own
            worst = max(worst, torch.linalg.matrix_norm(dev).max().item())
    return worst


@torch.no_grad()
def retract(module: nn.Module) -> int:
    """Re-orthonormalise the raw factors of every "exact" ENN weight in place (outputs unchanged).

    Call after each optimizer step (or let `retract_after_step` do it) so the raw factors stay well
    conditioned. Returns the number of ENN weights retracted; other modes are left alone.
    """
    count = 0
    for _, w in enn_weights(module):
        if w.ortho == "exact":
            w.retract()
            count += 1
    return count


def retract_after_step(optimizer: torch.optim.Optimizer, module: nn.Module) -> RemovableHandle | None:
    """Register `retract(module)` as a post-step hook of `optimizer`; None when `module` has no exact weights.

    A hook keeps every trainer (backprop, each ENN-ℓ stage's own optimizer, a user's loop) from forgetting
    the retraction. The module's weights are found once, here.
    """
    exact = [w for _, w in enn_weights(module) if w.ortho == "exact"]
    if not exact:
        return None

    def hook(*_: object) -> None:
        with torch.no_grad():
            for w in exact:
                w.retract()

    return optimizer.register_step_post_hook(hook)
