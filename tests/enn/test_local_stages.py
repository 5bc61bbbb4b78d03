"""ENN-ℓ stages and units: exact staged forward, ownership, detached boundaries, frozen heads."""

from __future__ import annotations

import copy
import functools

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch.nn.utils import parametrize

import enn
from enn.local import (
    LocalUnit,
    chain_stages,
    final_embeddings,
    make_units,
    run_units,
    split_clip,
    staged_forward,
)

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 5, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 48, "heads": 4, "layers": 4},
}
TINY_RESNET = {**TINY_VIT, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}}


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these tensors are tiny, and the pipeline's processes use one thread each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _pristine(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return enn.convert(open_clip.CLIP(**copy.deepcopy(TINY_VIT if name == "vit" else TINY_RESNET)))


def tiny_clip(cfg: dict = TINY_VIT, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised, ENN-converted tiny open_clip CLIP (a fresh copy: converting is slow)."""
    return copy.deepcopy(_pristine("vit" if cfg is TINY_VIT else "resnet", seed))


def batch(image_size: int = 32, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and token ids with an EOT-like maximum at varying positions (as real captions have)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 400, (n, 16), generator=g)
    for i in range(n):
        tokens[i, 3 + i % 10] = 499  # the "EOT" the argmax pooling picks
        tokens[i, 4 + i % 10 :] = 0
    return torch.randn(n, 3, image_size, image_size, generator=g), tokens


def attach_adamw(units, lr: float = 1e-3) -> None:
    for unit in units:
        unit.attach(torch.optim.AdamW(unit.parameters(), lr=lr), None)


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_composed_vit_and_text_stages_equal_the_model_forward(stages: int) -> None:
    model = tiny_clip().eval()
    images, tokens = batch()
    image, text = split_clip(model, stages)
    with torch.no_grad():
        assert torch.equal(staged_forward(image, images), model.encode_image(images))
        assert torch.equal(staged_forward(text, tokens, tokens), model.encode_text(tokens))


@pytest.mark.parametrize("stages", [2, 4])
def test_composed_resnet_stages_equal_the_model_forward(stages: int) -> None:
    model = tiny_clip(TINY_RESNET).eval()
    images, _ = batch(image_size=64)
    image, _ = split_clip(model, stages)
    with torch.no_grad():
        assert torch.equal(staged_forward(image, images), model.encode_image(images))


def test_blocks_are_grouped_evenly_and_every_tensor_has_one_owner() -> None:
    model = tiny_clip()
    image, text = split_clip(model, 4)
    assert [len(s.blocks) for s in image] == [1, 1, 1, 2]  # 5 blocks: the spare one goes last
    assert [len(s.blocks) for s in text] == [1, 1, 1, 1]
    units = make_units(model, 4, ClipLoss())
    owned = [key for u in units for key in u.state_keys]
    assert sorted(owned) == sorted(model.state_dict())  # a partition: nothing missed, nothing shared
    assert "token_embedding.weight" in units[0].state_keys and "logit_scale" in units[-1].state_keys


def test_towers_that_cannot_be_cut_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot split 4 blocks into 5"):
        split_clip(tiny_clip(), 5)
    with pytest.raises(ValueError, match="4 residual layers"):
        split_clip(tiny_clip(TINY_RESNET), 5)


def test_no_gradient_crosses_a_stage_boundary() -> None:
    model = tiny_clip()
    units = make_units(model, 2, ClipLoss())
    attach_adamw(units)
    images, tokens = batch()
    first, second = units
    image_out, text_out, loss = first((images, tokens, tokens))  # outputs still attached to stage 0's graph
    assert image_out.requires_grad and text_out.requires_grad
    before = copy.deepcopy(second.state_dict())
    second.train_step([(image_out, text_out, tokens)])
    assert all(p.grad is None for p in first.parameters())  # stage 1's backward stopped at its inputs
    assert any(not torch.equal(before[k], v) for k, v in second.state_dict().items())  # but stage 1 learned
    loss.backward()  # stage 0's own graph is intact and still differentiable
    assert all(p.grad is not None for p in first.image.blocks.parameters())


def test_random_local_heads_stay_frozen_and_learned_ones_train() -> None:
    images, tokens = batch()
    for kind, frozen in (("random", True), ("learned", False), ("mlp", False), ("block", False)):
        units = make_units(tiny_clip(), 3, ClipLoss(), head=kind)
        attach_adamw(units)
        heads = [u.head for u in units[:-1]]
        start = [(h.image_proj.clone(), h.text_proj.clone()) for h in heads]
        for _ in range(3):
            run_units(units, [(images, tokens, tokens)])
        for head, (img0, txt0) in zip(heads, start, strict=True):
            assert torch.equal(head.image_proj, img0) == frozen
            assert torch.equal(head.text_proj, txt0) == frozen
            optimised = {id(p) for u in units for g in u.optimizer.param_groups for p in g["params"]}
            assert (id(head.image_proj) in optimised) != frozen
            if kind in ("mlp", "block"):
                assert {id(p) for p in head.parameters()} <= optimised


def test_local_heads_are_the_same_in_every_process_and_orthonormal() -> None:
    a = make_units(tiny_clip(seed=0), 3, ClipLoss(), seed=7)
    b = make_units(tiny_clip(seed=1), 3, ClipLoss(), seed=7, only=[1])
    assert torch.equal(a[1].head.image_proj, b[0].head.image_proj)
    proj = a[0].head.image_proj  # 64 → 32: orthonormal columns
    assert torch.allclose(proj.T @ proj, torch.eye(32), atol=1e-5)
    assert not torch.equal(a[0].head.image_proj, a[1].head.image_proj[: proj.shape[0]])


def test_local_training_lowers_every_stage_loss() -> None:
    torch.manual_seed(0)
    model = tiny_clip()
    units = make_units(model, 3, ClipLoss(), ortho_weight=1e-3, grad_clip=1.0)
    attach_adamw(units, lr=3e-3)
    images, tokens = batch(n=8)
    first = run_units(units, [(images, tokens, tokens)])
    for _ in range(15):
        last = run_units(units, [(images, tokens, tokens)])
    for k in range(3):
        assert last[f"stage{k}_contrastive"] < 0.5 * first[f"stage{k}_contrastive"]


def test_micro_batches_accumulate_the_gradient_of_their_mean_loss() -> None:
    images, tokens = batch(n=8)
    model = tiny_clip()
    reference = copy.deepcopy(model)
    unit = make_units(model, 2, ClipLoss(), only=[0])[0]
    unit.attach(torch.optim.SGD(unit.parameters(), lr=0.1), None)
    ref_unit = make_units(reference, 2, ClipLoss(), only=[0])[0]
    micro = [(images[:4], tokens[:4], tokens[:4]), (images[4:], tokens[4:], tokens[4:])]
    outputs, _ = unit.train_step(micro)
    ((ref_unit(micro[0])[2] + ref_unit(micro[1])[2]) / 2).backward()  # plain SGD on the mean loss, by hand
    with torch.no_grad():
        for p in ref_unit.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert [o[0].shape[0] for o in outputs] == [4, 4]
    for key, value in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[key], value, atol=1e-6), key
    assert not torch.equal(model.visual.class_embedding, _pristine("vit", 0).visual.class_embedding)


def _readout_grad(model: torch.nn.Module, pool: str) -> torch.Tensor:
    """d(stage 0's local loss)/d(stage 0's image tokens), through its readout and head."""
    unit = make_units(model, 2, ClipLoss(), pool=pool, only=[0])[0]
    images, tokens = batch()
    image, text, _ = unit((images, tokens, tokens))
    image = image.detach().requires_grad_()
    img_feat, txt_feat = unit.head(unit.image.pool(image, tokens), unit.text.pool(text, tokens))
    ClipLoss()(img_feat, txt_feat, unit.head.logit_scale.exp()).backward()
    return image.grad.abs().sum(dim=(0, 2))  # (1 + grid²,) gradient mass per token


def test_final_local_readout_trains_the_tokens_the_towers_readout_reads() -> None:
    mean, final = _readout_grad(tiny_clip(), "mean"), _readout_grad(tiny_clip(), "final")
    assert (mean > 0).all()  # the mean reads every token
    assert final[0] > 0 and (final[1:] == 0).all()  # the class token only, as the final readout
    torch.manual_seed(0)
    avg_cfg = copy.deepcopy(TINY_VIT)
    avg_cfg["vision_cfg"]["pool_type"] = "avg"  # a ViT whose readout averages the patch tokens
    avg = _readout_grad(enn.convert(open_clip.CLIP(**avg_cfg)), "final")
    assert avg[0] == 0 and (avg[1:] > 0).all()


def test_final_readout_and_block_heads_refuse_a_resnet() -> None:
    with pytest.raises(ValueError, match="local_pool=final"):
        make_units(tiny_clip(TINY_RESNET), 2, ClipLoss(), pool="final")
    with pytest.raises(ValueError, match="local_head=block .* ViT"):
        make_units(tiny_clip(TINY_RESNET), 2, ClipLoss(), head="block")


def test_loss_groups_backprop_inside_a_group_and_detach_between_groups() -> None:
    model = tiny_clip()
    units = make_units(model, 4, ClipLoss(), groups=[[0, 1], [2, 3]])
    assert len(units) == 2 and sorted(k for u in units for k in u.state_keys) == sorted(model.state_dict())
    images, tokens = batch()
    first, second = units
    image_out, text_out, loss = first((images, tokens, tokens))
    loss.backward()  # one loss after stage 1 trains stages 0 and 1 of both towers
    for block in (*model.visual.transformer.resblocks[:2], *model.transformer.resblocks[:2]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters() if p.requires_grad)
    assert model.token_embedding.weight.grad is not None
    first.zero_grad(set_to_none=True)
    second.attach(torch.optim.AdamW(second.parameters(), lr=1e-3), None)
    second.train_step([(image_out, text_out, tokens)])
    assert all(p.grad is None for p in first.parameters())  # nothing crossed the group boundary
    # With 5 image blocks the groups hold 2 + 3 blocks, as 2 stages would: the same first loss, bit for bit.
    two_stages = make_units(tiny_clip(), 2, ClipLoss(), only=[0])[0]
    assert torch.equal(two_stages((images, tokens, tokens))[2], loss)
    with torch.no_grad():
        image, text = split_clip(model, 4)
        assert torch.equal(staged_forward(chain_stages(image, [[0], [1, 2, 3]]), images), model.encode_image(images))
    with pytest.raises(ValueError, match="contiguous"):
        chain_stages(image, [[0, 2], [1, 3]])


def test_block_heads_run_on_tokens_with_the_causal_mask_and_are_seeded() -> None:
    rng = torch.random.get_rng_state()
    unit = make_units(tiny_clip(), 3, ClipLoss(), head="block", seed=3, only=[1])[0]
    assert torch.equal(rng, torch.random.get_rng_state())  # building heads leaves the caller's RNG alone
    same = make_units(tiny_clip(seed=1), 3, ClipLoss(), head="block", seed=3, only=[1])[0]
    for (name, a), b in zip(unit.head.state_dict().items(), same.head.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert unit.head.image_block.attn.embed_dim == 64 and unit.head.text_block.attn.embed_dim == 48
    _, tokens = batch()
    text = torch.randn(6, 16, 48)
    later = text.clone()
    later[:, -1] += 1.0  # a position after every caption's EOT token
    pooled = [unit.text.pool(unit.head.refine(torch.zeros(6, 5, 64), t, unit.text.attn_mask_for_head)[1], tokens)
              for t in (text, later)]
    assert torch.equal(pooled[0], pooled[1])  # causal: the EOT readout never sees later positions
    unit((torch.randn(6, 17, 64), text, tokens))[2].backward()  # unit 1 reads stage 0's tokens
    for block in (unit.head.image_block, unit.head.text_block):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


@pytest.mark.parametrize(
    "options",
    [{"head": "block"}, {"pool": "final"}, {"groups": [[0, 1], [2]]},
     {"head": "block", "pool": "final", "groups": [[0], [1, 2]]}],
    ids=["block-head", "final-readout", "loss-groups", "all"],
)
def test_each_local_option_trains_for_three_steps(options: dict) -> None:
    model = tiny_clip()
    before = copy.deepcopy(model.state_dict())
    units = make_units(model, 3, ClipLoss(), ortho_weight=1e-3, grad_clip=1.0, **options)
    attach_adamw(units)
    images, tokens = batch()
    for _ in range(3):
        metrics = run_units(units, [(images, tokens, tokens)])
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert f"stage{len(units) - 1}_contrastive" in metrics
    unchanged = [name for name, p in model.named_parameters() if torch.equal(before[name], p)]
    assert unchanged == []  # every stage of both towers learned, whatever the grouping


def test_attention_pool_heads_read_the_map_and_auglocal_heads_copy_the_next_layer() -> None:
    from open_clip.modified_resnet import AttentionPool2d, Bottleneck

    units = make_units(tiny_clip(TINY_RESNET), 4, ClipLoss(), head="attnpool")
    pool = units[0].head.image_readout  # stage 0: 64 channels on a 16 × 16 map, heads of 16 channels
    assert isinstance(pool, AttentionPool2d) and pool.positional_embedding.shape == (16 * 16 + 1, 64)
    assert pool.num_heads == 4 and units[0].head.text_block is None
    aug = make_units(tiny_clip(TINY_RESNET), 4, ClipLoss(), head="auglocal")
    block, readout = aug[1].head.image_readout  # stage 1 (128 ch, 8 × 8) gets a fresh layer-3 bottleneck
    assert isinstance(block, Bottleneck) and (block.conv1.in_channels, block.conv1.out_channels, block.stride) == (128, 64, 2)
    assert readout.positional_embedding.shape == (4 * 4 + 1, 256)
    assert not any(parametrize.is_parametrized(m) for m in block.modules())  # a plain head, not ENN
    assert aug[1].head.text_block.attn.embed_dim == 48
    images, tokens = batch(image_size=64)
    aug[1]((torch.randn(6, 64, 16, 16), torch.randn(6, 16, 48), tokens))[2].backward()
    for module in (readout, aug[1].head.text_block):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)
    assert block.bn3.weight.grad.abs().sum() > 0  # (zero-initialised, as the tower's: its convs learn from step 2)
    with pytest.raises(ValueError, match="local_head=attnpool .* ModifiedResNet"):
        make_units(tiny_clip(), 2, ClipLoss(), head="attnpool")


def test_cross_targets_are_this_steps_final_embeddings_and_leave_buffers_alone() -> None:
    model = tiny_clip(TINY_RESNET)
    reference = copy.deepcopy(model).train()
    units = make_units(model, 2, ClipLoss(), head="learned")
    attach_adamw(units)
    images, tokens = batch(image_size=64)
    buffers = copy.deepcopy(dict(model.named_buffers()))
    (image, text), = final_embeddings(units, [(images, tokens, tokens)])
    with torch.no_grad():
        assert torch.allclose(image, F.normalize(reference.encode_image(images), dim=-1), atol=1e-6)
        assert torch.allclose(text, F.normalize(reference.encode_text(tokens), dim=-1), atol=1e-6)
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())  # BN statistics untouched
    own = units[0]((images, tokens, tokens))[2]
    crossed = units[0]((images, tokens, tokens), (image, text))[2]
    assert not torch.isclose(own, crossed)  # the targets enter the first unit's loss
    before = copy.deepcopy(model.state_dict())
    for _ in range(2):
        metrics = run_units(units, [(images, tokens, tokens)], cross_targets=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert [name for name, p in model.named_parameters() if torch.equal(before[name], p)] == []


def _unit_after_steps(ortho_weight: float, penalty_every: int, steps: int) -> tuple[LocalUnit, list[dict]]:
    """Unit 0 of the tiny ViT, its Q factors pushed off orthonormality (so the penalty has a gradient), after
    `steps` plain-SGD steps on the same micro-batch; returns it and each step's metrics."""
    model = tiny_clip()
    with torch.no_grad():
        for _, weight in enn.enn_weights(model):
            weight.Q.mul_(1.2)
    unit = make_units(model, 2, ClipLoss(), only=[0], ortho_weight=ortho_weight, penalty_every=penalty_every)[0]
    unit.attach(torch.optim.SGD(unit.parameters(), lr=0.5), None)
    images, tokens = batch(n=4)
    return unit, [unit.train_step([(images, tokens, tokens)])[1] for _ in range(steps)]


def _state_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((a.state_dict()[k] - v).abs().max()) for k, v in b.state_dict().items())


def test_a_lazy_local_penalty_is_k_times_stronger_on_due_steps_and_absent_between() -> None:
    lazy, metrics = _unit_after_steps(0.1, 3, 2)  # step 0 due (weight 3 × 0.1), step 1 skipped
    by_hand, _ = _unit_after_steps(0.3, 1, 1)
    by_hand.ortho_weight = 0.0  # step 1: the contrastive gradient only
    images, tokens = batch(n=4)
    by_hand.train_step([(images, tokens, tokens)])
    never, _ = _unit_after_steps(0.0, 1, 2)
    assert _state_gap(lazy, by_hand) < 1e-6
    assert _state_gap(lazy, never) > 1e-4  # the due step's penalty did move the factors
    assert metrics[1]["stage0_penalty"] == metrics[0]["stage0_penalty"] > 0  # skipped: the last value computed
    resumed = make_units(tiny_clip(), 2, ClipLoss(), only=[0], penalty_every=3)[0]
    resumed.attach(torch.optim.SGD(resumed.parameters(), lr=0.5), None)
    resumed.load_training_state(lazy.training_state())
    assert resumed.steps_taken == lazy.steps_taken == 2  # a resumed run keeps the penalty on the same steps
