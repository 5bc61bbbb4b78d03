"""Each ENN weight is formed once per training micro-batch and never at inference (merged weights)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.nn.utils import parametrize

import enn
from enn.parametrization import EnnWeight
from retrieval.model import build_towers
from retrieval.train.distributed import DistEnv
from retrieval.train.optim import build_optimizer, build_scheduler
from retrieval.train.step import build_loss, train_step


@pytest.fixture
def materialisations(monkeypatch) -> Counter:
    """Counts EnnWeight.forward calls per parametrization (id)."""
    calls: Counter = Counter()
    original = EnnWeight.forward

    def counting(self):
        calls[id(self)] += 1
        return original(self)

    monkeypatch.setattr(EnnWeight, "forward", counting)
    return calls


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_training_step_forms_each_enn_weight_once_per_micro_batch(tiny_config, materialisations, ortho):
    tiny_config["enn"]["ortho"] = ortho
    env = DistEnv.single()
    model = build_towers(tiny_config).model
    optimizer = build_optimizer(model, tiny_config["training"])
    scheduler = build_scheduler(optimizer, tiny_config["training"], total_steps=10)
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 16))
    weights = {id(w) for _, w in enn.enn_weights(model)}
    materialisations.clear()
    train_step(model, model, [(images, tokens), (images, tokens)], build_loss(env), optimizer, scheduler,
               tiny_config, env)
    assert set(materialisations) == weights
    assert set(materialisations.values()) == {2}  # 2 micro-batches; without caching MHA reads 3× per forward


def test_uncached_forward_reads_attention_weights_several_times(tiny_config, materialisations):
    # The reason for caching: without it, nn.MultiheadAttention re-forms in_proj_weight at every read.
    model = build_towers(tiny_config).model.train()
    model(torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 16)))
    assert max(materialisations.values()) > 1
    materialisations.clear()
    with parametrize.cached():
        model(torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 16)))
    assert set(materialisations.values()) == {1}


def test_loaded_models_run_on_merged_plain_weights(tiny_config, tmp_path):
    from retrieval.checkpoint import load_model, save_checkpoint

    towers = build_towers(tiny_config)
    save_checkpoint(tmp_path / "m.pt", towers, tiny_config)
    loaded = load_model(tmp_path / "m.pt", device="cpu")
    assert next(enn.enn_weights(loaded.model), None) is None
    tokens = torch.randint(1, 400, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(tokens), towers.model.eval().encode_text(tokens),
                                   rtol=1e-4, atol=1e-5)
