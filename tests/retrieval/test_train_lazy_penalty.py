"""The orthogonality penalty in the backprop step: once per step, and lazily (`enn.penalty_every`)."""

from __future__ import annotations

import copy

import pytest
import torch
from train_testing import max_weight_difference

import enn
from enn.orthogonality import lazy_penalty_weight
from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.model import build_towers
from retrieval.train.distributed import DistEnv
from retrieval.train.step import build_loss, train_step

ENV = DistEnv.single()


def _step_weights(base: dict, enn_cfg: dict, micro_batches: int, step: int) -> tuple[float | None, dict]:
    """One train_step of the tiny model from the same start, with the ENN factors pushed off orthonormality
    so the penalty has a gradient; returns the reported penalty and the weights after the step."""
    cfg = copy.deepcopy(base)
    cfg["enn"].update(enn_cfg)
    torch.manual_seed(0)
    images, tokens = torch.randn(6, 3, 32, 32), torch.randint(1, 400, (6, 16))
    torch.manual_seed(1)
    model = build_towers(cfg).model
    with torch.no_grad():
        for _, weight in enn.enn_weights(model):
            weight.Q.mul_(1.2)
    # Plain SGD at lr 1: the weights move by the gradient itself (AdamW's first step is nearly its sign).
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    result = train_step(model, model, [(images, tokens)] * micro_batches, build_loss(ENV), optimizer, scheduler,
                        cfg, ENV, step)
    return result.penalty, {k: v.clone() for k, v in model.state_dict().items()}


def test_the_schedule_pulls_k_times_harder_every_kth_step():
    assert [lazy_penalty_weight(0.5, 3, s) for s in range(7)] == [1.5, 0, 0, 1.5, 0, 0, 1.5]
    assert [lazy_penalty_weight(0.5, 1, s) for s in range(3)] == [0.5] * 3
    assert lazy_penalty_weight(0.0, 4, 0) == 0.0


def test_a_due_lazy_step_is_a_k_times_stronger_penalty_and_a_skipped_one_has_none(tiny_config):
    due_penalty, due = _step_weights(tiny_config, {"lambda": 0.1, "penalty_every": 3}, 1, step=3)
    _, stronger = _step_weights(tiny_config, {"lambda": 0.3, "penalty_every": 1}, 1, step=3)
    skipped_penalty, skipped = _step_weights(tiny_config, {"lambda": 0.1, "penalty_every": 3}, 1, step=4)
    _, without = _step_weights(tiny_config, {"ortho": "none"}, 1, step=4)
    assert due_penalty is not None and due_penalty > 0.1 and skipped_penalty is None
    assert max_weight_difference(due, stronger) < 1e-6
    assert max_weight_difference(skipped, without) < 1e-6
    assert max_weight_difference(due, skipped) > 1e-3  # the penalty moved the factors (clipped gradients)


def test_accumulated_micro_batches_add_the_penalty_once(tiny_config):
    one_penalty, one = _step_weights(tiny_config, {"lambda": 0.1, "penalty_every": 1}, 1, step=0)
    two_penalty, two = _step_weights(tiny_config, {"lambda": 0.1, "penalty_every": 1}, 2, step=0)
    assert two_penalty == pytest.approx(one_penalty)
    assert max_weight_difference(one, two) < 1e-6


@pytest.mark.parametrize("overrides", [["enn.penalty_every=0"], ["enn.penalty_every=1.5"], ["enn.penalty_every=true"]])
def test_bad_penalty_every_is_refused(overrides):
    with pytest.raises(UserError, match="enn.penalty_every"):
        load_config(None, overrides)
