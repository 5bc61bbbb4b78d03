"""Cut an open_clip CLIP's two towers into S consecutive stages whose composition is the tower's forward.

A stage *registers* the modules and parameters it owns (shared objects, not copies: the CLIP's
state_dict stays the source of truth) and *runs* the tower's own code for the pieces around the blocks
(`VisionTransformer._embeds` / `._pool`, `ModifiedResNet.stem`, open_clip's `text_global_pool`), so the
staged forward is the model's forward op for op — bitwise equal when composed.

Cuts (S = `stages`):
- ViT: stage 0 = patch embedding + class/positional embedding + ln_pre + its blocks; the L residual blocks
  are split into S contiguous groups (`split_evenly`); the last stage adds ln_post + pooling + `proj`.
- ModifiedResNet: the four residual layers are grouped into S ≤ 4 stages; the stem joins stage 0 and
  the attention pool the last.
- open_clip text transformer (CLIP's top-level `token_embedding` … `text_projection`): stage 0 = token +
  positional embedding + its blocks (with the causal mask), the last = ln_final + EOT pooling +
  `text_projection`.

Local readouts (`pool`, what a non-last stage's local head sees): `"mean"` — ViT: the mean of all tokens,
ResNet: global average; `"final"` — the token(s) the tower's own final readout reads (ViT: open_clip's
`_global_pool`, the class token by default). Text always reads the model's own pooling (EOT by default).

`chain_stages` joins contiguous stages into one (a loss group: backprop inside it, detach between groups).

Hugging Face and timm towers are not supported (their internals are model specific).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

POOLS = ("mean", "final")


def split_evenly(n: int, parts: int) -> list[range]:
    """`n` units into `parts` contiguous non-empty groups whose sizes differ by at most one.

    The larger groups come last: stage 0 already carries the embeddings (and, for text, the big token
    embedding's optimizer update), so giving it fewer blocks balances a pipeline better.
    """
    if parts < 1 or n < parts:
        raise ValueError(f"cannot split {n} blocks into {parts} stages (need at least one block per stage)")
    base, extra = divmod(n, parts)
    sizes = [base + (1 if i >= parts - extra else 0) for i in range(parts)]
    starts = [sum(sizes[:i]) for i in range(parts)]
    return [range(s, s + k) for s, k in zip(starts, sizes, strict=True)]


class TowerStage(nn.Module):
    """One slice of a tower. `forward(x, tokens)` → next hidden state (the last stage: the embedding).

    Stage 0's `x` is the tower input (pixels; for text the token ids themselves).

    `pool(h, tokens)` summarises a non-last stage's output as one (B, `width`) vector per sample for its
    local head. `tokens` (the caption token ids) is passed to every stage: text pooling needs it.
    """

    def __init__(self, index: int, count: int, width: int) -> None:
        super().__init__()
        self.index, self.count, self.width = index, count, width

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1

    def pool(self, h: Tensor, tokens: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def attn_mask_for_head(self) -> Tensor | None:
        """The attention mask a token-level local head must use on this stage's output (text: causal)."""
        return None

    @property
    def last_block(self) -> nn.Module:
        """The stage's last residual block (the template of a `block` local head)."""
        return self.blocks[-1]

    @property
    def first_block(self) -> nn.Module:
        """The stage's first residual block (the previous stage's `auglocal` head copies its shape)."""
        return self.blocks[0]

    def extra_repr(self) -> str:
        return f"stage {self.index + 1}/{self.count}, width={self.width}"


class VitStage(TowerStage):
    """A slice of open_clip's `VisionTransformer` (hidden state: (B, 1 + grid², width) tokens)."""

    def __init__(self, visual: nn.Module, blocks: range, index: int, count: int, pool: str = "mean") -> None:
        super().__init__(index, count, visual.transformer.width)
        if not visual.transformer.batch_first:
            raise ValueError("ENN-ℓ stages need a batch-first open_clip transformer")
        if pool == "final" and (visual.attn_pool is not None or visual.pool_type not in ("tok", "avg")):
            raise ValueError("local_pool=final reads the ViT's class token or token average; this tower pools "
                             "with an attention pool, which belongs to its last stage (use local_pool=mean)")
        self.readout = pool
        self._tower = (visual,)  # a tuple hides it from nn.Module registration: we own only our parts
        self.blocks = nn.ModuleList(visual.transformer.resblocks[i] for i in blocks)
        if self.is_first:
            self.conv1, self.patch_dropout, self.ln_pre = visual.conv1, visual.patch_dropout, visual.ln_pre
            self.class_embedding = visual.class_embedding
            self.positional_embedding = visual.positional_embedding
        if self.is_last:
            self.ln_post, self.proj = visual.ln_post, visual.proj
            self.attn_pool = visual.attn_pool
            self.attn_pool_contrastive = getattr(visual, "attn_pool_contrastive", None)

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        visual = self._tower[0]
        if self.is_first:
            x = visual._embeds(x)  # (B, 3, H, W) -> (B, 1 + grid², width)
        for block in self.blocks:
            x = block(x, attn_mask=None)
        if self.is_last:
            pooled, _ = visual._pool(x)
            x = pooled @ visual.proj if visual.proj is not None else pooled  # (B, embed_dim)
        return x

    def pool(self, h: Tensor, tokens: Tensor | None = None) -> Tensor:
        """The local readout. mean: over all tokens (early on the class token has gathered little; the mean trains every
        token); final: the tower's own token selection (class token, or the patch average), so the local
        loss trains the path the final embedding reads."""
        if self.readout == "final":
            return self._tower[0]._global_pool(h)[0]  # (B, 1 + grid², width) -> (B, width)
        return h.mean(dim=1)


class ResNetStage(TowerStage):
    """A slice of open_clip's `ModifiedResNet` (hidden state: (B, C, H, W) feature maps)."""

    def __init__(self, visual: nn.Module, layers: range, index: int, count: int, pool: str = "mean") -> None:
        if pool != "mean":
            raise ValueError("local_pool=final: a ModifiedResNet's final readout is its attention pool, which "
                             "belongs to its last stage (use local_pool=mean)")
        all_layers = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        chosen = [all_layers[i] for i in layers]
        width = chosen[-1][-1].conv3.out_channels  # Bottleneck output channels of our last layer
        super().__init__(index, count, width)
        self._tower = (visual,)
        self.layers = nn.ModuleList(chosen)
        # The output map's side (the stem quarters the image, each layer after the first halves it) and the
        # channels per head of the tower's own attention pool: what an attention-pool local head needs.
        self.spatial = visual.image_size // 4 // 2 ** layers[-1]
        self.head_width = visual.attnpool.k_proj.in_features // visual.attnpool.num_heads
        if self.is_first:
            self.stem = nn.ModuleList(
                [visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
                 visual.conv3, visual.bn3, visual.act3, visual.avgpool]
            )
        if self.is_last:
            self.attnpool = visual.attnpool

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        if self.is_first:
            x = self._tower[0].stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.attnpool(x) if self.is_last else x

    def pool(self, h: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Global average over the feature map (the usual ResNet summary)."""
        return h.mean(dim=(2, 3))

    @property
    def last_block(self) -> nn.Module:
        return self.layers[-1][-1]

    @property
    def first_block(self) -> nn.Module:
        return self.layers[0][0]


class TextStage(TowerStage):
    """A slice of the open_clip text transformer that a `CLIP` keeps at its top level."""

    def __init__(self, model: nn.Module, blocks: range, index: int, count: int) -> None:
        super().__init__(index, count, model.transformer.width)  # its local readout is always the model's
        if not model.transformer.batch_first:
            raise ValueError("ENN-ℓ stages need a batch-first open_clip transformer")
        self.pool_type = model.text_pool_type
        self.eos_id = getattr(model, "text_eos_id", None)
        self.blocks = nn.ModuleList(model.transformer.resblocks[i] for i in blocks)
        # Our own (non-persistent) reference, so `.to(device)` on the stage moves the causal mask too.
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        if self.is_first:
            self.token_embedding = model.token_embedding
            self.positional_embedding = model.positional_embedding
        if self.is_last:
            self.ln_final, self.text_projection = model.ln_final, model.text_projection

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        if self.is_first:
            # As CLIP.encode_text: embed in the blocks' weight dtype, add positions.
            dtype = next(self.blocks[0].mlp.parameters()).dtype
            x = self.token_embedding(x).to(dtype) + self.positional_embedding.to(dtype)  # ids (B, T) → (B, T, width)
        for block in self.blocks:
            x = block(x, attn_mask=self.attn_mask)
        if self.is_last:
            x = self.pool(self.ln_final(x), tokens)
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            elif self.text_projection is not None:
                x = x @ self.text_projection  # (B, embed_dim)
        return x

    def pool(self, h: Tensor, tokens: Tensor) -> Tensor:
        """The model's own text pooling (EOT token by default): under the causal mask only that position
        has read the whole caption, so a mean would mostly summarise prefixes."""
        from open_clip.transformer import text_global_pool  # lazy: enn depends only on torch

        return text_global_pool(h, tokens, self.pool_type, eos_token_id=self.eos_id)

    @property
    def attn_mask_for_head(self) -> Tensor | None:
        return self.attn_mask


class StageChain(TowerStage):
    """Contiguous stages run as one (a loss group): gradients flow through all of them, the group's local
    loss reads its last stage, and its index/count are the group's."""

    def __init__(self, stages: Sequence[TowerStage], index: int, count: int) -> None:
        super().__init__(index, count, stages[-1].width)
        self.stages = nn.ModuleList(stages)
        for name in ("spatial", "head_width"):  # a conv group's output map is its last stage's
            if hasattr(stages[-1], name):
                setattr(self, name, getattr(stages[-1], name))

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        for stage in self.stages:
            x = stage(x, tokens)
        return x

    def pool(self, h: Tensor, tokens: Tensor | None = None) -> Tensor:
        return self.stages[-1].pool(h, tokens)

    @property
    def attn_mask_for_head(self) -> Tensor | None:
        return self.stages[-1].attn_mask_for_head

    @property
    def last_block(self) -> nn.Module:
        return self.stages[-1].last_block

    @property
    def first_block(self) -> nn.Module:
        return self.stages[0].first_block

    def extra_repr(self) -> str:
        first, last = self.stages[0].index, self.stages[-1].index
        return f"group {self.index + 1}/{self.count}: stages {first + 1}–{last + 1}, width={self.width}"


def chain_stages(stages: Sequence[TowerStage], groups: Sequence[Sequence[int]]) -> list[TowerStage]:
    """Join `stages` into one `StageChain` per group of consecutive indices (which must partition them)."""
    if [i for g in groups for i in g] != list(range(len(stages))) or not all(groups):
        raise ValueError(f"loss groups {[list(g) for g in groups]} must split stages 0–{len(stages) - 1} "
                         "into contiguous non-empty runs")
    return [StageChain([stages[i] for i in g], k, len(groups)) for k, g in enumerate(groups)]


def _vision_kind(visual: nn.Module) -> str:
    if hasattr(visual, "_embeds") and hasattr(visual, "transformer") and hasattr(visual, "_pool"):
        return "vit"
    if all(hasattr(visual, name) for name in ("stem", "layer1", "layer4", "attnpool")):
        return "resnet"
    raise ValueError(
        f"ENN-ℓ cannot cut a {type(visual).__name__} image tower: open_clip ViT or ModifiedResNet only"
    )


def split_clip(model: nn.Module, stages: int, pool: str = "mean") -> tuple[list[TowerStage], list[TowerStage]]:
    """(image stages, text stages) of an open_clip `CLIP`, each list of length `stages`; `pool` is the
    image stages' local readout (`POOLS`).

    Composing them (`x = stage(x, tokens)` in order) gives `encode_image` / `encode_text` exactly.
    Raises ValueError for a tower that cannot be cut (HF/timm towers, fewer blocks than stages).
    """
    if pool not in POOLS:
        raise ValueError(f"unknown local pool {pool!r}; valid: {', '.join(POOLS)}")
    visual = model.visual
    if _vision_kind(visual) == "vit":
        groups = split_evenly(len(visual.transformer.resblocks), stages)
        image = [VitStage(visual, g, i, stages, pool) for i, g in enumerate(groups)]
    else:
        if stages > 4:
            raise ValueError(f"a ModifiedResNet has 4 residual layers; cannot cut it into {stages} stages")
        image = [ResNetStage(visual, g, i, stages, pool) for i, g in enumerate(split_evenly(4, stages))]
    if not (hasattr(model, "token_embedding") and hasattr(model, "transformer")):
        raise ValueError(
            f"ENN-ℓ cannot cut the text tower of a {type(model).__name__}: open_clip's own text transformer only"
        )
    groups = split_evenly(len(model.transformer.resblocks), stages)
    text = [TextStage(model, g, i, stages) for i, g in enumerate(groups)]
    return image, text


def staged_forward(stages: list[TowerStage], x: Tensor, tokens: Tensor | None = None) -> Tensor:
    """Run a list of stages in order (inference / checks): equal to the tower's forward."""
    for stage in stages:
        x = stage(x, tokens)
    return x
