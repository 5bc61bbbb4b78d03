"""Classify parameters by ENN role so optimizers can treat Λ, the bases and the rest differently."""

from __future__ import annotations

from torch import nn

ROLES = ("basis", "eigen", "other")
_BASIS_NAMES = frozenset({"Q", "P", "Q_raw", "P_raw"})


def parameter_role(name: str) -> str:
    """Role of a parameter from its ``named_parameters()`` name: "eigen" (Λ), "basis" (Q, P) or "other".

    ENN factors live at ``<layer>.parametrizations.<tensor>.0.{Q,lam,P}`` ("exact": ``Q_raw``/``P_raw``).
    """
    parts = name.split(".")
    if len(parts) < 4 or parts[-4] != "parametrizations":
        return "other"
    if parts[-1] == "lam":
        return "eigen"
    return "basis" if parts[-1] in _BASIS_NAMES else "other"


def parameter_groups(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split ``module.parameters()`` into {"basis": Q/P, "eigen": Λ, "other": everything else}.

    Typical use: AdamW groups with weight decay on "eigen" (Λ ← (1 − lr·wd)·Λ is exactly the plain layer's
    W ← (1 − lr·wd)·W) and none on "basis"; "other" as for any network. Frozen parameters are included;
    filter if needed.
    """
    groups: dict[str, list[nn.Parameter]] = {role: [] for role in ROLES}
    for name, param in module.named_parameters():
        groups[parameter_role(name)].append(param)
    return groups
