"""``EnnLinear`` and ``EnnConv2d``: torch.nn layers born in ENN form, for building new networks."""

from __future__ import annotations

from torch import nn
from torch.nn.common_types import _size_2_t
from torch.nn.utils import parametrize

from enn.parametrization import EnnWeight, check_ortho


def _parametrize_weight(layer: nn.Module, blocks: int, ortho: str) -> None:
    """Replace ``layer.weight`` by its ENN factorisation (SVD of the freshly initialised weight)."""
    enn = EnnWeight(layer.weight, blocks=blocks, ortho=ortho, param_order=tuple(layer._parameters))
    parametrize.register_parametrization(layer, "weight", enn)


class EnnLinear(nn.Linear):
    """``nn.Linear`` whose weight is Q·diag(Λ)·Pᵀ, initialised from the SVD of torch's default (Kaiming) init.

    Same arguments as ``nn.Linear`` plus ``ortho`` ("penalty" | "exact" | "none").
    ``enn.merge`` turns it back into a plain-weight layer (the class stays ``EnnLinear``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        ortho: str = "penalty",
    ) -> None:
        check_ortho(ortho)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        _parametrize_weight(self, blocks=1, ortho=ortho)


class EnnConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel, flattened to out × (in/groups·kh·kw), is Q·diag(Λ)·Pᵀ per group.

    Same arguments as ``nn.Conv2d`` plus ``ortho``; initialised from the SVD of torch's default (Kaiming)
    init. With ``groups > 1`` each group has its own Q, Λ, P (a block-diagonal factorisation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        ortho: str = "penalty",
    ) -> None:
        check_ortho(ortho)
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
        )
        _parametrize_weight(self, blocks=groups, ortho=ortho)
