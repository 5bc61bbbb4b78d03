"""`training.total_steps`: a run of exactly N optimizer steps whose cosine schedule ends at N (the budget an
equal-wall-clock comparison gives a faster variant), unlike `max_steps`, which cuts a longer schedule short."""

from __future__ import annotations

import pytest
from test_train_local import LOCAL
from train_testing import one_thread, train_config, train_overrides  # noqa: F401

from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.train import RunDir, train_bp
from retrieval.train.local import train_local
from retrieval.train.optim import cosine_with_warmup, schedule_steps

LR, WARMUP = 2.0e-3, 2  # train_config's rate and warm-up; 48 images in batches of 8: 6 steps per epoch


def _lrs(out) -> dict[int, float]:
    """The rate each logged step used."""
    return {r["step"]: r["lr"] for r in RunDir(out).read_metrics() if r["kind"] == "train"}


def test_schedule_length_is_total_steps_when_set_else_epochs_times_steps_per_epoch():
    assert schedule_steps({"total_steps": None, "epochs": 4}, 140) == 560
    assert schedule_steps({"total_steps": 694, "epochs": 4}, 140) == 694


@pytest.mark.parametrize("value", [0, -3, 2.5, "ten", True])
def test_total_steps_must_be_a_positive_integer(value):
    with pytest.raises(UserError, match="training.total_steps"):
        load_config(None, [f"training.total_steps={value}"])


def test_a_run_of_n_steps_past_the_configured_epochs_decays_to_zero_at_step_n(synth_dataset, tmp_path):
    summary = train_bp(train_config(synth_dataset, "training.total_steps=15"), tmp_path / "run")  # epochs=2: 12
    assert summary["step"] == 15 and summary["epoch"] == 2  # two whole epochs, the third partial
    lrs = _lrs(tmp_path / "run")
    assert sorted(lrs) == list(range(1, 16))
    assert lrs == pytest.approx({s: LR * cosine_with_warmup(s - 1, WARMUP, 15) for s in lrs})
    assert lrs[15] < 0.02 * LR and cosine_with_warmup(15, WARMUP, 15) == 0.0  # the next step's rate would be 0


def test_fewer_steps_than_the_epochs_shorten_the_schedule_unlike_max_steps(synth_dataset, tmp_path):
    train_bp(train_config(synth_dataset, "training.total_steps=9"), tmp_path / "total")
    train_bp(train_config(synth_dataset, "training.max_steps=9"), tmp_path / "max")
    total, cut = _lrs(tmp_path / "total"), _lrs(tmp_path / "max")
    assert sorted(total) == sorted(cut) == list(range(1, 10))
    assert total[9] == pytest.approx(LR * cosine_with_warmup(8, WARMUP, 9)) and total[9] < 0.05 * LR
    assert cut[9] == pytest.approx(LR * cosine_with_warmup(8, WARMUP, 12)) and cut[9] > 0.2 * LR


def test_enn_local_runs_total_steps_too(synth_dataset, tmp_path):
    cfg = load_config(None, train_overrides(synth_dataset, *LOCAL, "training.total_steps=4"))
    assert train_local(cfg, tmp_path / "run")["step"] == 4
    assert _lrs(tmp_path / "run")[4] == pytest.approx(0.5 * LR)  # half-way down a 2-step cosine (12 steps: 0.98)
