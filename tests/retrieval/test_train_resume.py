"""`--resume` continues exactly: a run cut short (or killed) and resumed ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_testing import checkpoint_weights, max_weight_difference, one_thread, train_config  # noqa: F401

from retrieval.config import save_config
from retrieval.train import RunDir, train_bp

TOLERANCE = 1e-5  # same ops in the same order on CPU: differences are float noise at most


def _train_losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.read_metrics() if r["kind"] == "train"}


@pytest.fixture(scope="module")
def uninterrupted(synth_dataset, tmp_path_factory) -> RunDir:
    """12 steps (2 epochs of 6) in one go."""
    out = tmp_path_factory.mktemp("full") / "run"
    train_bp(train_config(synth_dataset), out)
    return RunDir(out)


def test_stopped_mid_epoch_then_resumed_equals_uninterrupted(synth_dataset, uninterrupted, tmp_path):
    out = tmp_path / "run"
    # Stop after step 9: past one epoch boundary (validation) and half-way through the second epoch.
    first = train_bp(train_config(synth_dataset, "training.max_steps=9"), out)
    assert first["step"] == 9
    saved = torch.load(RunDir(out).last, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["batch_in_epoch"]) == (1, 3)
    # Resume with loader worker processes this time: sample order and augmentation must not depend on them.
    second = train_bp(train_config(synth_dataset, "data.workers=2"), out, resume=True)
    assert second["step"] == 12
    run = RunDir(out)
    assert max_weight_difference(checkpoint_weights(run.last), checkpoint_weights(uninterrupted.last)) < TOLERANCE
    # the same losses step by step, each step logged once
    losses, expected = _train_losses(run), _train_losses(uninterrupted)
    assert sorted(losses) == list(range(1, 13))
    assert [losses[s] for s in range(1, 13)] == pytest.approx([expected[s] for s in range(1, 13)], abs=1e-5)
    resumed_state = torch.load(run.last, map_location="cpu", weights_only=False)["optimizer"]["state"]
    full_state = torch.load(uninterrupted.last, map_location="cpu", weights_only=False)["optimizer"]["state"]
    assert all(torch.allclose(resumed_state[k]["exp_avg_sq"], full_state[k]["exp_avg_sq"], atol=1e-7)
               for k in full_state)


def test_resume_from_a_mid_epoch_save_point(synth_dataset, uninterrupted, tmp_path):
    out = tmp_path / "run"
    train_bp(train_config(synth_dataset, "training.max_steps=10"), out)
    # Replace last.pt by the step-4 save (save_every_steps=2) as if the process had died right after it.
    run = RunDir(out)
    train_bp(train_config(synth_dataset, "training.max_steps=4"), tmp_path / "early")
    os.replace(RunDir(tmp_path / "early").last, run.last)
    train_bp(train_config(synth_dataset), out, resume=True)
    assert max_weight_difference(checkpoint_weights(run.last), checkpoint_weights(uninterrupted.last)) < TOLERANCE
    assert sorted(_train_losses(run)) == list(range(1, 13))  # steps 5-10 were redone and logged once


@pytest.mark.slow
def test_killed_process_resumed_from_the_cli_equals_uninterrupted(synth_dataset, tmp_path):
    steps = 36
    cfg = train_config(synth_dataset, "training.epochs=6")
    config = tmp_path / "tiny.yaml"
    save_config(cfg, config)
    reference = tmp_path / "reference"
    train_bp(cfg, reference)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "retrieval", "train", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if run.last.is_file() and len(_train_losses(run)) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved_step = torch.load(run.last, map_location="cpu", weights_only=False)["step"]
    assert 0 < saved_step < steps, "the kill must land mid-run for this test to mean anything"
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    final = checkpoint_weights(run.last)
    assert max_weight_difference(final, checkpoint_weights(RunDir(reference).last)) < TOLERANCE


def test_a_run_without_validation_resumed_from_an_old_checkpoint_reports_no_rsum(synth_dataset, tmp_path):
    out = tmp_path / "run"
    train_bp(train_config(synth_dataset, "data.val_split=null", "training.max_steps=4"), out)
    run = RunDir(out)
    saved = torch.load(run.last, map_location="cpu", weights_only=False)
    # Before best_rsum meant "validation RSUM", a run without validation stored its step count there.
    saved["progress"]["best_rsum"] = float(saved["progress"]["step"])
    torch.save(saved, run.last)
    summary = train_bp(train_config(synth_dataset, "data.val_split=null", "training.max_steps=6"), out, resume=True)
    assert summary["step"] == 6
    assert summary["best_rsum"] is None and summary["best"] == "last checkpoint" and summary["best_step"] == 6
