"""LiT-style locking (model.lock_image / model.lock_text): what open_clip freezes, on plain and ENN towers."""

from __future__ import annotations

import pytest
import torch
from open_clip.loss import ClipLoss
from train_testing import one_thread, train_config  # noqa: F401  (one_thread: autouse fixture)

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.lock import tower_parameters
from retrieval.model import build_towers
from retrieval.train import train_bp
from retrieval.train.optim import build_optimizer
from retrieval.train.session import seed_everything
from tests.conftest import TINY_MODEL_OVERRIDES

RESNET = [  # a tiny ModifiedResNet image tower: the one open_clip tower with BatchNorm
    "model.embed_dim=32",
    "model.vision_cfg={image_size: 64, layers: [1, 1, 1, 1], width: 8, head_width: 8}",
    TINY_MODEL_OVERRIDES[2],
]


def _plain_name(name: str) -> str:
    """`a.parametrizations.weight.0.Q` (an ENN factor) → `a.weight`, the plain tensor it stands for."""
    head, sep, tail = name.partition(".parametrizations.")
    return f"{head}.{tail.split('.')[0]}" if sep else name


def _trainable(model: torch.nn.Module) -> set[str]:
    return {_plain_name(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("enn_enabled", [True, False], ids=["enn", "plain"])
@pytest.mark.parametrize(
    ("lock", "open_clip_lock"),
    [
        (["model.lock_image=true"], lambda m: m.lock_image_tower()),
        (["model.lock_image=true", "model.lock_image_unlocked_groups=2"], lambda m: m.lock_image_tower(2)),
        (["model.lock_text=true"], lambda m: m.lock_text_tower()),
        (["model.lock_text=true", "model.lock_text_unlocked_groups=1"], lambda m: m.lock_text_tower(1)),
        (["model.lock_image=true", "model.lock_text=true", "model.lock_text_unlocked_groups=3"],
         lambda m: (m.lock_image_tower(), m.lock_text_tower(3))),
    ],
    ids=["image", "image-last-2", "text", "text-last-1", "both"],
)
def test_locking_freezes_what_open_clip_freezes(lock, open_clip_lock, enn_enabled):
    reference = build_towers(load_config(None, [*TINY_MODEL_OVERRIDES, "enn.enabled=false"])).model
    open_clip_lock(reference)
    towers = build_towers(load_config(None, [*TINY_MODEL_OVERRIDES, *lock, f"enn.enabled={enn_enabled}"]))
    assert _trainable(towers.model) == _trainable(reference)
    assert _trainable(towers.model) < {_plain_name(n) for n, _ in towers.model.named_parameters()}
    if enn_enabled:  # every factor of one weight is frozen or trainable together
        by_weight: dict[str, set[bool]] = {}
        for name, param in towers.model.named_parameters():
            by_weight.setdefault(_plain_name(name), set()).add(param.requires_grad)
        assert all(len(flags) == 1 for flags in by_weight.values())


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_optimizer_holds_only_trainable_tensors_and_locked_ones_stay_bit_identical(ortho):
    towers = build_towers(load_config(None, [*TINY_MODEL_OVERRIDES, "model.lock_image=true", f"enn.ortho={ortho}",
                                             "training.weight_decay=0.5"]))
    model = towers.model
    optimizer = build_optimizer(model, load_config(None)["training"] | {"lr": 1e-2, "weight_decay": 0.5})
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    image_before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    text_before = {n: p.detach().clone() for n, p in tower_parameters(model, "text")}
    loss_fn = ClipLoss()
    torch.manual_seed(0)
    for _ in range(2):
        images, tokens = torch.randn(4, 3, 32, 32), torch.randint(0, 49408, (4, 16))
        loss_fn(*model(images, tokens)[:3]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(v, image_before[k]) for k, v in model.visual.state_dict().items())
    assert any(not torch.equal(p, text_before[n]) for n, p in tower_parameters(model, "text"))


def test_freeze_bn_stats_keeps_a_locked_resnet_normalising_with_its_pretrained_statistics():
    def stats_after_a_training_forward(*lock):
        model = build_towers(load_config(None, [*RESNET, "model.lock_image=true", *lock])).model.train()
        before = {k: v.clone() for k, v in model.visual.state_dict().items() if "running" in k}
        model.encode_image(torch.randn(4, 3, 64, 64))
        return before, {k: v for k, v in model.visual.state_dict().items() if "running" in k}

    before, after = stats_after_a_training_forward("model.lock_image_freeze_bn_stats=true")
    assert before and all(torch.equal(after[k], before[k]) for k in before)
    before, after = stats_after_a_training_forward()  # locked weights, but BatchNorm still updates its statistics
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_a_frozen_batchnorm_checkpoint_loads_back(tmp_path):
    cfg = load_config(None, [*RESNET, "model.lock_image=true", "model.lock_image_freeze_bn_stats=true"])
    towers = build_towers(cfg)
    save_checkpoint(tmp_path / "ckpt.pt", towers, cfg)
    loaded = load_model(tmp_path / "ckpt.pt", device="cpu")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(images), towers.model.eval().encode_image(images),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ([*RESNET, "model.lock_image=true", "model.lock_image_unlocked_groups=1"], ["ModifiedResNet"]),
        ([*TINY_MODEL_OVERRIDES, "model.lock_text=true", "model.lock_text_freeze_layer_norm=false"],
         ["Hugging Face"]),
        ([*TINY_MODEL_OVERRIDES, "model.lock_image=true", "model.lock_image_unlocked_groups=9"],
         ["whole image tower"]),
        ([*TINY_MODEL_OVERRIDES, "model.lock_text=true", "model.lock_text_unlocked_groups=-1"], ["≥ 0"]),
    ],
    ids=["resnet-partial", "text-layernorm", "unlocks-everything", "negative"],
)
def test_locks_open_clip_cannot_do_are_one_line_errors(overrides, words):
    with pytest.raises(UserError) as err:
        build_towers(load_config(None, overrides))
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_training_a_locked_image_tower_leaves_it_as_it_started(synth_dataset, tmp_path):
    cfg = train_config(synth_dataset, "model.lock_image=true", "training.max_steps=2", "enn.ortho=exact")
    seed_everything(int(cfg["training"]["seed"]))  # as the trainer does before it builds the towers
    initial = build_towers(cfg).model.visual.state_dict()
    summary = train_bp(cfg, tmp_path / "run")
    assert summary["step"] == 2
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    visual = {k.removeprefix("visual."): v for k, v in trained["model"].items() if k.startswith("visual.")}
    assert visual.keys() == initial.keys() and all(torch.equal(visual[k], initial[k]) for k in visual)
