"""AdamW parameter groups (what is decayed) and the cosine schedule with warm-up."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import enn
from retrieval.model import build_towers
from retrieval.train.optim import build_optimizer, build_scheduler, cosine_with_warmup, param_groups
from tests.conftest import TINY_MODEL_OVERRIDES


def _decayed_names(model, weight_decay=0.1):
    groups = param_groups(model, weight_decay)
    ids = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == weight_decay and groups[1]["weight_decay"] == 0.0
    return {name for name, p in model.named_parameters() if id(p) in ids}, {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_decay_on_eigenvalues_not_bases_biases_norms_or_temperature(tiny_config, ortho):
    tiny_config["enn"]["ortho"] = ortho
    model = build_towers(tiny_config).model
    decayed, names = _decayed_names(model)
    eigen = {n for n in names if n.endswith(".lam")}
    assert eigen and eigen <= decayed  # Λ ← (1 − lr·wd)·Λ is the plain layer's decay
    for name in names:
        if name.endswith((".Q", ".P", ".Q_raw", ".P_raw", "bias", "logit_scale")) or ".ln_" in name:
            assert name not in decayed, name
    assert "positional_embedding" in decayed and "token_embedding.weight" in decayed
    assert "visual.class_embedding" not in decayed  # 1-D


@pytest.mark.parametrize("ortho", ["penalty", "exact", "none"])
def test_one_zero_gradient_step_scales_an_enn_weight_exactly_like_a_plain_one(ortho):
    torch.manual_seed(0)
    plain = torch.nn.Linear(12, 7)
    converted = enn.convert(copy.deepcopy(plain), ortho=ortho)
    cfg = {"lr": 0.05, "weight_decay": 0.2, "betas": [0.9, 0.98], "eps": 1e-6}
    for model in (plain, converted):
        before = model.weight.detach().clone()
        optimizer = build_optimizer(model, cfg)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        torch.testing.assert_close(model.weight.detach(), (1 - 0.05 * 0.2) * before, rtol=1e-6, atol=1e-7)


def test_every_trainable_parameter_is_in_exactly_one_group(tiny_config):
    model = build_towers(tiny_config).model
    optimizer = build_optimizer(model, tiny_config["training"])
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_plain_model_decays_its_weight_matrices(tiny_config):
    tiny_config["enn"]["enabled"] = False
    model = build_towers(tiny_config).model
    decayed, _ = _decayed_names(model)
    assert "transformer.resblocks.0.mlp.c_fc.weight" in decayed
    assert "transformer.resblocks.0.mlp.c_fc.bias" not in decayed


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    warmup, total = 4, 20
    values = [cosine_with_warmup(s, warmup, total) for s in range(total + 1)]
    assert values[:warmup] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[warmup] == pytest.approx(1.0)
    middle = warmup + (total - warmup) // 2
    assert values[middle] == pytest.approx(0.5)
    assert values[total] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1 :], strict=False))


def test_scheduler_position_survives_a_state_dict_round_trip():
    cfg = {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 3}
    model = torch.nn.Linear(4, 4)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    fresh_optimizer = build_optimizer(model, cfg)
    fresh = build_scheduler(fresh_optimizer, cfg, total_steps=10)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (6 - 3) / 7))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_config_overrides_reach_adamw():
    from retrieval.config import load_config

    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "training.lr=3e-4", "training.betas=[0.8, 0.9]"])
    optimizer = build_optimizer(build_towers(cfg).model, cfg["training"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_enn_local_stage_optimizers_decay_eigenvalues_and_retract(tiny_config, ortho):
    from retrieval.train.local_units import build_units

    tiny_config["enn"]["ortho"] = ortho
    tiny_config["training"]["stages"] = 2
    model = build_towers(tiny_config).model
    units = build_units(tiny_config, model, torch.device("cpu"), total_steps=10)
    for unit in units:
        decayed = {id(p) for p in unit.optimizer.param_groups[0]["params"]}
        names = dict(unit.named_parameters())
        eigen = [p for n, p in names.items() if n.endswith(".lam")]
        bases = [p for n, p in names.items() if n.endswith((".Q", ".P", ".Q_raw", ".P_raw"))]
        assert eigen and all(id(p) in decayed for p in eigen)
        assert bases and not any(id(p) in decayed for p in bases)
        assert bool(unit.optimizer._optimizer_step_post_hooks) == (ortho == "exact")


def test_adamw_uses_the_fused_kernel_on_cpu_with_the_same_update(tiny_config):
    """The fused kernel (one pass per tensor, 6× faster here) must step exactly as torch's reference loop."""
    model = build_towers(tiny_config).model
    reference = copy.deepcopy(model)
    fused = build_optimizer(model, tiny_config["training"])
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(param_groups(reference, float(tiny_config["training"]["weight_decay"])),
                             lr=float(tiny_config["training"]["lr"]), eps=float(tiny_config["training"]["eps"]),
                             betas=tuple(float(b) for b in tiny_config["training"]["betas"]))
    torch.manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            q.grad = torch.randn_like(q) if q.requires_grad else None
            p.grad = None if q.grad is None else q.grad.clone()
        fused.step()
        loop.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
