"""Turn the weights of an existing network into ENN form (``convert``) and back (``merge``), in place."""

from __future__ import annotations

import fnmatch
import logging
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from enn.parametrization import EnnWeight, check_ortho, enn_weights

log = logging.getLogger(__name__)


def _targets(mod: nn.Module) -> list[tuple[str, int]]:
    """(tensor name, row blocks) of the weights ENN takes over in ``mod`` itself (not its children)."""
    if isinstance(mod, nn.MultiheadAttention):
        if mod._qkv_same_embed_dim:
            # The packed (3E × E) in-projection is three matrices q, k, v: one Q/Λ/P each.
            return [("in_proj_weight", 3)]
        return [("q_proj_weight", 1), ("k_proj_weight", 1), ("v_proj_weight", 1)]
    if isinstance(mod, nn.Conv2d):
        # (out, in/g, kh, kw): each group is its own (out/g) × (in/g·kh·kw) matrix -> block-diagonal ENN.
        return [("weight", mod.groups)]
    if isinstance(mod, nn.Linear):  # includes MultiheadAttention.out_proj (NonDynamicallyQuantizableLinear)
        return [("weight", 1)]
    return []


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    """True when the module or one of its ancestors matches an exclude glob (a glob excludes a subtree)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def _owners(module: nn.Module) -> dict[int, list[str]]:
    """Map parameter id -> qualified names of every distinct module slot holding it (to detect tied weights)."""
    owners: dict[int, list[str]] = defaultdict(list)
    for mname, mod in module.named_modules():
        for pname, p in mod._parameters.items():
            if p is not None:
                owners[id(p)].append(f"{mname}.{pname}" if mname else pname)
    return owners


def _check_target(mod: nn.Module, qualname: str, tensor_name: str, ortho: str, owners: dict) -> bool:
    """Raise if the tensor cannot be converted; return False if it already is ENN in this mode (skip)."""
    if parametrize.is_parametrized(mod, tensor_name):
        plist = mod.parametrizations[tensor_name]
        enn = [p for p in plist if isinstance(p, EnnWeight)]
        if not enn:
            kinds = ", ".join(type(p).__name__ for p in plist)
            raise ValueError(f"{qualname} already has a parametrization ({kinds}); ENN cannot be stacked on it")
        if enn[0].ortho != ortho:
            raise ValueError(
                f"{qualname} is already ENN with ortho={enn[0].ortho!r}; merge() first to convert with {ortho!r}"
            )
        return False
    weight = getattr(mod, tensor_name)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{qualname} is an uninitialised lazy parameter; run a forward pass before convert()")
    if not weight.is_floating_point():
        raise ValueError(f"{qualname} has dtype {weight.dtype}; ENN needs a floating-point weight")
    names = owners.get(id(weight), [])
    if len(names) > 1:
        raise ValueError(
            f"{qualname} is tied to {', '.join(n for n in names if n != qualname)}; converting would untie "
            "them — exclude these modules"
        )
    return True


def _own_class(mod: nn.Module) -> None:
    """Give a parametrized module a private copy of its generated class before adding/removing a parametrization.

    torch's parametrize generates one class per module, but ``copy.deepcopy`` hands the copy that same class;
    registering or removing a parametrization edits the class (a property per tensor), which would break
    the other copy. A per-module copy of the class keeps them independent.
    """
    cls = type(mod)
    attrs = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    mod.__class__ = type(cls.__name__, cls.__bases__, attrs)


def convert(module: nn.Module, ortho: str = "penalty", exclude: Iterable[str] | str = ()) -> nn.Module:
    """Re-parameterise every Linear, Conv2d and MultiheadAttention weight as Q·diag(Λ)·Pᵀ, in place.

    Factors come from the SVD of the current weights, so the network computes the same function.
    ``exclude``: fnmatch globs on module names (``model.named_modules()``); a matching module and its whole
    subtree stay plain. Grouped convolutions are converted per group (block-diagonal: one Q/Λ/P per group).
    Already-converted weights in the same mode are left as they are. Either everything selected is
    converted or, on error, nothing is touched. Returns ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert() expects a torch.nn.Module, got {type(module).__name__}")
    check_ortho(ortho)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    owners = _owners(module)
    plan = []
    for name, mod in module.named_modules():
        targets = _targets(mod)
        if not targets or _excluded(name, patterns):
            continue
        for tensor_name, blocks in targets:
            qualname = f"{name}.{tensor_name}" if name else tensor_name
            if _check_target(mod, qualname, tensor_name, ortho, owners):
                plan.append((mod, tensor_name, blocks))
    if not plan and next(enn_weights(module), None) is None:
        raise ValueError(
            f"{type(module).__name__} has no Linear, Conv2d or MultiheadAttention weights to convert"
            + (f" outside exclude={list(patterns)}" if patterns else "")
        )
    orders = {id(mod): tuple(mod._parameters) for mod, _, _ in plan}
    for mod in {id(mod): mod for mod, _, _ in plan}.values():
        if parametrize.is_parametrized(mod):
            _own_class(mod)
    for mod, tensor_name, blocks in plan:
        weight = getattr(mod, tensor_name)
        enn = EnnWeight(weight, blocks=blocks, ortho=ortho, param_order=orders[id(mod)])
        parametrize.register_parametrization(mod, tensor_name, enn)
    log.debug("converted %d weight tensors to ENN (ortho=%s)", len(plan), ortho)
    return module


def _restore_order(mod: nn.Module, order: tuple[str, ...]) -> None:
    """Put the module's parameters back in their pre-convert order, so state_dict() lists keys identically."""
    params = mod._parameters
    names = [k for k in order if k in params] + [k for k in params if k not in order]
    items = [(k, params[k]) for k in names]
    params.clear()
    params.update(items)


def merge(module: nn.Module) -> nn.Module:
    """Fold every ENN weight back into a plain parameter, in place: same classes, keys and outputs as before.

    Meant for export and inference; an optimizer built on the ENN parameters does not follow the merge.
    A module without ENN weights is returned unchanged.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"merge() expects a torch.nn.Module, got {type(module).__name__}")
    plan = []
    for name, mod in module.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        names = [t for t, plist in mod.parametrizations.items() if isinstance(plist[0], EnnWeight)]
        for tensor_name in names:
            if len(mod.parametrizations[tensor_name]) > 1:
                raise ValueError(f"{name}.{tensor_name} has other parametrizations stacked on ENN; remove them first")
        if names:
            plan.append((mod, names))
    for mod, names in plan:
        _own_class(mod)
        order: tuple[str, ...] = ()
        for tensor_name in names:
            enn = mod.parametrizations[tensor_name][0]
            order = enn.param_order
            with torch.no_grad():
                parametrize.remove_parametrizations(mod, tensor_name, leave_parametrized=True)
                weight = getattr(mod, tensor_name).detach()
            # remove_parametrizations registers a grad-less result as a buffer; make it a parameter again.
            delattr(mod, tensor_name)
            mod.register_parameter(tensor_name, nn.Parameter(weight, requires_grad=enn.lam.requires_grad))
        if order:
            _restore_order(mod, order)
    return module
