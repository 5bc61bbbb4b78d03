"""torchrun on CPU (2 gloo processes): the same losses and weights as one process on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_testing import checkpoint_weights, max_weight_difference, one_thread, train_config  # noqa: F401

from retrieval.config import save_config
from retrieval.train import RunDir, train_bp


# siglip: SigLipLoss passes the text features between the ranks and each rank's loss is its share of the
# global one; the logged loss is their mean, which is what one process computes.
@pytest.mark.parametrize("loss", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_two_gloo_processes_equal_one_process(synth_dataset, tmp_path, loss):
    # 1 epoch of 6 global batches of 8: each rank takes 4 samples per step, features are gathered.
    cfg = train_config(synth_dataset, "training.epochs=1", "training.save_every_steps=0", f"training.loss={loss}")
    single = RunDir(tmp_path / "single")
    train_bp(cfg, single.root)
    config = tmp_path / "tiny.yaml"
    save_config(cfg, config)
    ddp = RunDir(tmp_path / "ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "retrieval", "train", "--config", str(config), "--out", str(ddp.root)]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("steps in") == 1  # only rank 0 reports
    assert "2 rank(s) × 4 micro-batch" in result.stderr
    losses = {r["step"]: r["loss"] for r in ddp.read_metrics() if r["kind"] == "train"}
    expected = {r["step"]: r["loss"] for r in single.read_metrics() if r["kind"] == "train"}
    assert sorted(losses) == sorted(expected) == list(range(1, 7))
    assert [losses[s] for s in expected] == pytest.approx([expected[s] for s in expected], abs=1e-5)
    assert max_weight_difference(checkpoint_weights(ddp.last), checkpoint_weights(single.last)) < 1e-5
    val = [r for r in ddp.read_metrics() if r["kind"] == "val"]
    assert len(val) == 1  # rank 0 validated once
