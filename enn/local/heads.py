"""Local heads: map a stage's image and text features into one space for its contrastive loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_KINDS = ("random", "learned", "mlp", "block", "attnpool", "auglocal")


def random_projection(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A (rows × cols) matrix with orthonormal columns (or rows, if rows < cols), drawn from `generator`.

    Orthonormal rather than i.i.d. Gaussian: the projection then preserves the angles between the
    features it keeps, so a frozen head never makes two different inputs collide by chance.
    """
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # the QR sign convention → a Haar-uniform basis
    return (q if rows >= cols else q.T).to(torch.float32)


class LocalHead(nn.Module):
    """Stage k's head: parameter-free LayerNorm → projection to `dim`, for each tower, + a temperature.

    `kind="random"` (the paper's ENN-ℓ): the projections are frozen buffers, so only the stage learns to
    make its image and text features agree through a fixed random readout; `kind="learned"`: they are
    trained with the stage; `kind="mlp"`: a learned hidden layer (width → width, GELU) comes before the
    learned projection, as in SimCLR's projection head, so the head rather than the stage's features can
    absorb what only this stage's loss wants; `kind="block"`: one freshly initialised transformer block
    per tower (open_clip's `ResidualAttentionBlock`, shaped like the (image, text) template `blocks`, the
    stages' last blocks) runs on the stage's *tokens* before the readout, then a learned projection:
    depth at the token level, as DGL/InfoPro/AugLocal's auxiliary networks, so that binding across tokens
    can still be read out; `kind="attnpool"` (conv towers): the image map is read by a fresh attention
    pool, the readout a ModifiedResNet's own final stage uses, instead of a global average, then a
    learned projection (text: learned projection of its EOT token); `kind="auglocal"`: AugLocal's
    auxiliary network adapted to two towers — a fresh copy of the *next* stage's first layer (image: its
    bottleneck, text: its transformer block) before that readout, so the local loss judges the features
    the way the following layer will read them. The temperature (a logit scale, like CLIP's) is learned in every case: the
    sharpness that suits an early stage is not the final one's. The LayerNorm mirrors the towers' own
    ln_post/ln_final → projection readout and keeps the scale of the residual stream out of the loss.
    """

    def __init__(
        self,
        image_width: int,
        text_width: int,
        dim: int,
        kind: str = "random",
        init_logit_scale: float = math.log(1 / 0.07),
        seed: int = 0,
        blocks: tuple[nn.Module | None, nn.Module | None] = (None, None),
        image_readout: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown local head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")
        needs = {"block": (True, True, False), "attnpool": (False, False, True), "auglocal": (False, True, True)}
        given = (blocks[0] is not None, blocks[1] is not None, image_readout is not None)
        if given != needs.get(kind, (False, False, False)):
            raise ValueError(f"a {kind} local head needs (image block, text block, image readout) = "
                             f"{needs.get(kind, (False, False, False))}, got {given}")
        self.kind = kind
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left untouched
            torch.manual_seed(seed)
            self.image_block = fresh_block(blocks[0]) if blocks[0] is not None else None
            self.text_block = fresh_block(blocks[1]) if blocks[1] is not None else None
            # (the image map → (B, image_width) vector; None: the stage's own pool)
            self.image_readout = image_readout() if image_readout is not None else None
        image = random_projection(image_width, dim, generator)
        text = random_projection(text_width, dim, generator)
        if kind == "mlp":
            self.image_hidden = nn.Parameter(random_projection(image_width, image_width, generator))
            self.text_hidden = nn.Parameter(random_projection(text_width, text_width, generator))
            self.image_bias = nn.Parameter(torch.zeros(image_width))
            self.text_bias = nn.Parameter(torch.zeros(text_width))
        if kind != "random":
            self.image_proj, self.text_proj = nn.Parameter(image), nn.Parameter(text)
        else:
            self.register_buffer("image_proj", image)
            self.register_buffer("text_proj", text)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def refine(self, image: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Token-level part (block heads; auglocal's text block): (B, T, width) stage outputs → same shape.
        `text_mask` is the text tower's causal mask, so the EOT readout still sees only its prefix."""
        if self.image_block is not None:
            image = self.image_block(image, attn_mask=None)
        if self.text_block is not None:
            text = self.text_block(text, attn_mask=text_mask)
        return image, text

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(B, image_width), (B, text_width) pooled features → L2-normalised (B, dim) pairs."""
        image, text = F.layer_norm(image, image.shape[-1:]), F.layer_norm(text, text.shape[-1:])
        if self.kind == "mlp":
            image = F.gelu(image @ self.image_hidden.to(image.dtype) + self.image_bias.to(image.dtype))
            text = F.gelu(text @ self.text_hidden.to(text.dtype) + self.text_bias.to(text.dtype))
        image, text = image @ self.image_proj.to(image.dtype), text @ self.text_proj.to(text.dtype)
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, image_proj={tuple(self.image_proj.shape)}, text_proj={tuple(self.text_proj.shape)}"


def fresh_block(template: nn.Module) -> nn.Module:
    """A newly initialised open_clip `ResidualAttentionBlock` of `template`'s width, heads and MLP ratio
    (plain weights, not ENN: it is a head, not part of the model)."""
    from open_clip.transformer import ResidualAttentionBlock  # lazy: enn depends only on torch

    width = template.attn.embed_dim
    ratio = template.mlp.c_fc.out_features / width
    return ResidualAttentionBlock(width, template.attn.num_heads, mlp_ratio=ratio, batch_first=True)


def attention_readout(width: int, spatial: int, head_width: int, out_width: int) -> nn.Module:
    """A fresh open_clip `AttentionPool2d` over a (B, width, spatial, spatial) map → (B, out_width), with
    heads of `head_width` channels and open_clip's initialisation (as ModifiedResNet's final readout)."""
    from open_clip.modified_resnet import AttentionPool2d  # lazy: enn depends only on torch

    pool = AttentionPool2d(spatial, width, max(1, width // head_width), out_width)
    for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        nn.init.normal_(proj.weight, std=width**-0.5)
    return pool


def next_layer_readout(template: nn.Module, spatial: int, head_width: int, out_width: int) -> nn.Module:
    """AugLocal's auxiliary net for a conv stage: a fresh bottleneck shaped like `template` (the next
    stage's first block, whose input is this stage's map of side `spatial`), then `attention_readout`."""
    from open_clip.modified_resnet import Bottleneck

    block = Bottleneck(template.conv1.in_channels, template.conv1.out_channels, template.stride)
    nn.init.zeros_(block.bn3.weight)  # as ModifiedResNet.init_parameters: the block starts as its shortcut
    width = template.conv1.out_channels * Bottleneck.expansion
    return nn.Sequential(block, attention_readout(width, spatial // template.stride, head_width, out_width))
