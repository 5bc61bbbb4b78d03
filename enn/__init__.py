"""Eigen Neural Network (ENN) layers: every weight matrix stored as W = Q · diag(Λ) · Pᵀ.

Depends only on torch. Quick use::

    import enn
    enn.convert(model, ortho="penalty")          # in place; outputs unchanged (SVD initialisation)
    loss = task_loss + lam * enn.orthogonality_loss(model)
    enn.orthogonality_error(model)               # float, for logging
    enn.merge(model)                             # back to the plain model (same classes and state_dict keys)

Modes (``ortho``): "penalty" — free Q, P plus the published penalty Σ ‖QᵀQ−I‖²_F + ‖PᵀP−I‖²_F;
"exact" — Q, P are the QR factors of free matrices (float32, autocast off), orthonormal to float precision at
every step, covering the whole Stiefel manifold (penalty is 0); after each optimizer step the free matrices are
replaced by their QR factors (``retract``, or ``retract_after_step(optimizer, model)``) so they stay well
conditioned; "none" — free Q, P and no penalty (ablation).

What is converted: ``nn.Linear`` (incl. ``MultiheadAttention.out_proj``), ``nn.Conv2d`` (kernel flattened
to out × in·kh·kw; ``groups > 1`` -> one Q/Λ/P per group) and ``nn.MultiheadAttention`` in-projections
(packed ``in_proj_weight`` -> one factorisation each for q, k, v; else ``q/k/v_proj_weight``). Norms,
embeddings, biases and raw ``nn.Parameter`` projections (e.g. open_clip's ``proj``) stay plain.

Weight decay: decay Λ and not Q, P — AdamW's W ← (1 − lr·wd)·W is exactly Λ ← (1 − lr·wd)·Λ.
Parameter names (for optimizer groups; see ``parameter_groups`` / ``parameter_role``): a converted tensor
``<layer>.<tensor>`` is stored as ``<layer>.parametrizations.<tensor>.0.lam`` (Λ, role "eigen") and
``...0.Q`` / ``...0.P`` (role "basis"; in "exact" mode ``...0.Q_raw`` / ``...0.P_raw``). These are also the
state_dict keys, so a converted model's checkpoint loads (strict) into a fresh model converted the same way.
Whole-module pickling of a converted model is not supported by torch (use state_dict).
"""

from enn.convert import convert, merge
from enn.layers import EnnConv2d, EnnLinear
from enn.orthogonality import orthogonality_error, orthogonality_loss, retract, retract_after_step
from enn.orthonormal import orthonormalize
from enn.parametrization import ORTHO_MODES, EnnWeight, enn_weights
from enn.params import ROLES, parameter_groups, parameter_role

__all__ = [
    "ORTHO_MODES",
    "ROLES",
    "EnnConv2d",
    "EnnLinear",
    "EnnWeight",
    "convert",
    "enn_weights",
    "merge",
    "orthogonality_error",
    "orthogonality_loss",
    "orthonormalize",
    "parameter_groups",
    "parameter_role",
    "retract",
    "retract_after_step",
]
