"""The ENN weight parametrization W = Q · diag(Λ) · Pᵀ, for use with ``torch.nn.utils.parametrize``."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from enn.orthonormal import orthonormal_factor, orthonormalize, projected_identity

ORTHO_MODES = ("penalty", "exact", "none")


def check_ortho(ortho: str) -> str:
    """Validate an ``ortho`` mode name so every entry point rejects typos the same way."""
    if ortho not in ORTHO_MODES:
        raise ValueError(f"unknown ortho mode {ortho!r}; valid modes are {', '.join(map(repr, ORTHO_MODES))}")
    return ortho


class EnnWeight(nn.Module):
    """Parametrization that stores a weight as ``blocks`` independent products Q · diag(Λ) · Pᵀ.

    The weight (any shape whose first dimension is the output size) is viewed as ``blocks`` row blocks of
    shape (m, n) = (out/blocks, numel/out): one block for a Linear, ``groups`` blocks for a grouped conv,
    three (q, k, v) for an attention ``in_proj_weight``. Each block has Q (m×r), Λ (r), P (n×r) with
    r = min(m, n); with one block the leading block dimension is dropped, so Q is simply (out×r).

    Parameter names (this module sits at ``<layer>.parametrizations.<tensor>.0``):
    ``lam`` is Λ; ``Q``/``P`` are the bases for ortho "penalty"/"none"; for "exact" the stored parameters are
    ``Q_raw``/``P_raw``, unconstrained matrices whose QR factor is the (exactly orthonormal) basis.
    The distinct names make a strict ``load_state_dict`` across modes fail loudly instead of silently.

    ``right_inverse`` re-factorises a plain weight by SVD (float64), so registering this parametrization,
    or assigning ``layer.weight = w`` afterwards, sets the factors such that the layer computes ``w``.
    """

    def __init__(
        self,
        weight: Tensor,
        blocks: int = 1,
        ortho: str = "penalty",
        param_order: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.ortho = check_ortho(ortho)
        out = weight.shape[0]
        if blocks < 1 or out % blocks:
            raise ValueError(f"cannot split a weight of shape {tuple(weight.shape)} into {blocks} row blocks")
        self.shape = tuple(weight.shape)
        self.blocks = blocks
        # Names of the host module's parameters before conversion, so merge can restore state_dict order.
        self.param_order = param_order
        m, n = out // blocks, weight.numel() // out
        r = min(m, n)
        lead = (blocks,) if blocks > 1 else ()
        kw = {"device": weight.device, "dtype": weight.dtype}
        grad = weight.requires_grad
        suffix = "_raw" if ortho == "exact" else ""
        # Empty until right_inverse (called by register_parametrization) fills them; registered in the
        # order Q, Λ, P so the state_dict reads like the formula.
        self.register_parameter("Q" + suffix, nn.Parameter(torch.empty(*lead, m, r, **kw), grad))
        self.lam = nn.Parameter(torch.empty(*lead, r, **kw), grad)
        self.register_parameter("P" + suffix, nn.Parameter(torch.empty(*lead, n, r, **kw), grad))
        self._clean: dict[str, Fingerprint] = {}  # exact mode: each clean raw factor as `retract` left it

    def _stored_bases(self) -> tuple[Tensor, Tensor]:
        if self.ortho == "exact":
            return self.Q_raw, self.P_raw
        return self.Q, self.P

    def bases(self) -> tuple[Tensor, Tensor]:
        """The bases (Q, P) used in the product; orthonormalised on the fly in "exact" mode.

        Right after `retract` the raw factors are their own orthonormal factors (R = I), so while a factor is
        bit for bit what `retract` left the QR is skipped: the basis is the raw factor itself, with QR's
        backward at R = I. "Bit for bit" is read from the values (`Fingerprint`), not from
        ``Tensor._version``, which fused optimizers and ``.data`` writes leave as it was.
        """
        q, p = self._stored_bases()
        if self.ortho == "exact":
            return tuple(projected_identity(raw) if name in self._clean and self._clean[name].matches(raw)
                         else orthonormalize(raw) for name, raw in (("Q", q), ("P", p)))
        return q, p

    @torch.no_grad()
    def retract(self) -> None:
        """Exact mode: replace the raw factors by their orthonormal factors; the computed weight is unchanged.

        AdamW moves ``Q_raw``/``P_raw`` freely, so without this they drift towards ill-conditioned matrices
        (cond 1 → 1,500 in 1,500 steps on a toy MLP), and the QR backward multiplies every gradient by R⁻ᵀ.
        QR of an orthonormal matrix with a positive diagonal R returns it unchanged, so the next forward
        computes the same weight and R is the identity again. No-op in the other modes.
        """
        if self.ortho != "exact":
            return
        for name, raw in (("Q", self.Q_raw), ("P", self.P_raw)):
            factor, orthonormal = orthonormal_factor(raw)
            raw.copy_(factor)
            # Clean only when what was stored is orthonormal to rounding: not when the retraction missed
            # that bound, nor when storing rounded it to half precision (‖QᵀQ − I‖ ≈ 1e-2 in bf16).
            if orthonormal and raw.dtype in (torch.float32, torch.float64):
                self._clean[name] = Fingerprint(raw)
            else:
                self._clean.pop(name, None)

    def forward(self) -> Tensor:
        """Materialise the weight: Q·diag(Λ)·Pᵀ per block, reshaped to the host's weight shape."""
        q, p = self.bases()
        # (…, m, r) * (…, 1, r) @ (…, r, n) -> (…, m, n): one out·in·r matmul, in the factors' dtype (exact
        # mode's bases come back in float32 even for half-precision factors).
        return ((q * self.lam.unsqueeze(-2)) @ p.mT).reshape(self.shape).to(self.lam.dtype)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> tuple[()]:
        """Set Q, Λ, P from the SVD of ``weight`` (done in float64 so the round trip is exact to float32)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"expected a weight of shape {self.shape}, got {tuple(weight.shape)}")
        w = weight.detach().reshape(self.blocks, self.shape[0] // self.blocks, -1).to(torch.float64)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        if self.blocks == 1:
            u, s, vh = u[0], s[0], vh[0]
        q, p = self._stored_bases()
        q.copy_(u)
        self.lam.copy_(s)
        p.copy_(vh.mT)
        # The factors are this module's own parameters, so parametrize keeps no "original" tensor.
        return ()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, blocks={self.blocks}, ortho={self.ortho!r}"


@functools.lru_cache(maxsize=64)
def _probe(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(0)  # fixed and private: the global RNG stream is left alone
    return torch.randn(size, generator=gen, dtype=dtype).to(device)


class Fingerprint:
    """Tells whether a tensor still holds the values it had when fingerprinted, in one pass over it.

    Each row's dot product with a fixed random probe (one matrix-vector product, m·r multiply-adds; no QR,
    no copy of the tensor). Any write that changes a value by more than the rounding of those sums changes
    the fingerprint, whoever wrote it (short of a change crafted to be orthogonal to the probe); a change
    below that rounding leaves the factor orthonormal to rounding anyway. A different dtype, device or
    shape never matches.
    """

    def __init__(self, t: Tensor) -> None:
        self.probe = _probe(t.shape[-1], t.dtype, t.device)
        self.meta = (t.shape, t.dtype, t.device)
        self.sums = self._sums(t)

    def _sums(self, t: Tensor) -> Tensor:
        return t.detach() @ self.probe

    def matches(self, t: Tensor) -> bool:
        """Whether ``t`` holds exactly the fingerprinted values (a host sync on accelerators)."""
        return (t.shape, t.dtype, t.device) == self.meta and torch.equal(self._sums(t), self.sums)


def enn_weights(module: nn.Module) -> Iterator[tuple[str, EnnWeight]]:
    """Yield ``(qualified tensor name, EnnWeight)`` for every ENN-parameterised tensor under ``module``."""
    for name, mod in module.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for tensor_name, plist in mod.parametrizations.items():
            for p in plist:
                if isinstance(p, EnnWeight):
                    yield (f"{name}.{tensor_name}" if name else tensor_name), p
