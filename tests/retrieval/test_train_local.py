"""ENN-ℓ trainer (`training.method: local`): run directory, checkpoints, resume across modes, bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from train_testing import checkpoint_weights, one_thread, train_overrides  # noqa: F401  (one_thread: autouse)

from retrieval.checkpoint import load_model, read_checkpoint
from retrieval.commands.train import main as train_main
from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.model import build_towers
from retrieval.train import RunDir
from retrieval.train.local import train_local
from retrieval.train.local_pipeline import pipeline_layout
from retrieval.train.local_units import build_units

# Two blocks per tower, so that two stages each own one block (the shared tiny model has one).
LOCAL = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 2, head_width: 16, mlp_ratio: 2.0}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 2, mlp_ratio: 2.0}",
    "training.method=local",
    "training.stages=2",
    "training.pipeline_threads=1",
]


def local_config(dataset, *extra: str) -> dict:
    return load_config(None, train_overrides(dataset, *LOCAL, *extra))


def _train_records(run: RunDir) -> dict[int, dict]:
    return {r["step"]: r for r in run.read_metrics() if r["kind"] == "train"}


@pytest.fixture(scope="module")
def sequential_run(synth_dataset, tmp_path_factory) -> RunDir:
    """12 sequential ENN-ℓ steps (2 epochs of 6), through the `retrieval train` command."""
    root = tmp_path_factory.mktemp("local")
    (root / "local.yaml").write_text("training:\n  method: local\n")
    out = root / "run"
    argv = ["--config", str(root / "local.yaml"), "--out", str(out)]
    argv += [f"--set={pair}" for pair in train_overrides(synth_dataset, *LOCAL)]
    assert train_main(argv) == 0
    return RunDir(out)


def test_a_sequential_run_writes_the_run_directory(sequential_run):
    run = sequential_run
    assert run.config.is_file() and run.last.is_file() and run.best.is_file() and run.curves.is_file()
    records = _train_records(run)
    assert sorted(records) == list(range(1, 13))
    for record in records.values():
        assert {"loss", "stage0_loss", "stage1_loss", "orthogonality_error", "samples_per_s", "lr"} <= set(record)
        assert record["contrastive_loss"] == record["stage1_loss"]  # the last stage's loss is the CLIP loss
    assert [r["step"] for r in run.read_metrics() if r["kind"] == "val"] == [6, 12]
    # one optimizer and schedule per stage, the local heads, and an ordinary loadable model
    payload = read_checkpoint(run.last)
    assert isinstance(payload["optimizer"], list) and len(payload["optimizer"]) == 2
    assert len(payload["scheduler"]) == 2 and payload["step"] == 12
    heads = payload["extra_state"]["local_heads"]
    assert set(heads) == {"0.image_proj", "0.text_proj", "0.logit_scale"}
    loaded = load_model(run.root)
    with torch.no_grad():
        emb = loaded.model.encode_text(loaded.tokenizer(["a red circle"]))
    assert emb.shape == (1, 16) and torch.isfinite(emb).all()


def test_local_training_learns(sequential_run):
    records = _train_records(sequential_run)
    assert records[12]["stage0_loss"] < records[1]["stage0_loss"]
    assert records[12]["stage1_loss"] < records[1]["stage1_loss"]


def test_stopped_sequential_then_resumed_pipelined_equals_uninterrupted(synth_dataset, sequential_run, tmp_path):
    out = tmp_path / "run"
    first = train_local(local_config(synth_dataset, "training.max_steps=4"), out)
    assert first["step"] == 4 and first["mode"] == "sequential"
    second = train_local(local_config(synth_dataset, "training.pipeline=true"), out, resume=True)
    assert second["step"] == 12 and second["mode"] == "pipeline"
    resumed, full = checkpoint_weights(RunDir(out).last), checkpoint_weights(sequential_run.last)
    assert resumed.keys() == full.keys()
    for key in full:  # one thread per stage process, one in this process: the same ops, the same bits
        assert torch.equal(resumed[key], full[key]), key
    losses, expected = _train_records(RunDir(out)), _train_records(sequential_run)
    assert sorted(losses) == list(range(1, 13))
    assert [losses[s]["stage0_loss"] for s in range(1, 13)] == [expected[s]["stage0_loss"] for s in range(1, 13)]
    saved = read_checkpoint(RunDir(out).last)["optimizer"][0]["state"]
    reference = read_checkpoint(sequential_run.last)["optimizer"][0]["state"]
    assert all(torch.equal(saved[k]["exp_avg_sq"], reference[k]["exp_avg_sq"]) for k in reference)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["training.stages=3"], "cannot split 2 blocks into 3 stages"),
        (["training.pipeline=true", "training.pipeline_procs=3"], "pipeline_procs must be between 1 and"),
    ],
)
def test_configs_that_cannot_run_are_refused_clearly(synth_dataset, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        train_local(local_config(synth_dataset, *extra), tmp_path / "run")


FOUR_BLOCKS = [  # per-group losses need more stages than processes: 4 stages, 2 processes, 2 losses
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 4, head_width: 16, mlp_ratio: 2.0}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 4, mlp_ratio: 2.0}",
    "training.stages=4",
    "training.pipeline_procs=2",
]


ALL_OPTIONS = [*FOUR_BLOCKS, "training.local_losses=per_group", "training.local_head=block",
               "training.local_pool=final"]


def test_local_options_reach_the_units(synth_dataset):
    cfg = local_config(synth_dataset, *ALL_OPTIONS)
    units = build_units(cfg, build_towers(cfg).model, torch.device("cpu"), total_steps=10)
    assert len(units) == 2 and [len(u.image.stages) for u in units] == [2, 2]  # 4 stages, 2 losses
    assert units[0].head.kind == "block" and units[0].image.stages[-1].readout == "final"
    assert pipeline_layout(cfg["training"], torch.device("cpu"))[0] == [[0], [1]]  # one loss per process


def test_local_options_train_and_pipeline_to_the_sequential_weights(synth_dataset, tmp_path):
    """Per-group losses, block heads and the final readout together: 3 steps, sequential = pipelined."""
    extra, losses = ALL_OPTIONS, 2
    sequential = train_local(local_config(synth_dataset, "training.max_steps=3", *extra), tmp_path / "seq")
    pipelined = train_local(local_config(synth_dataset, "training.max_steps=3", "training.pipeline=true", *extra),
                            tmp_path / "pipe")
    assert (sequential["step"], pipelined["step"], pipelined["mode"]) == (3, 3, "pipeline")
    assert "pipeline_stats" not in sequential  # the summary says where a pipelined run's time went
    assert [s["steps"] for s in pipelined["pipeline_stats"]["stages"]] == [3, 3]
    assert pipelined["pipeline_stats"]["feeder_cpu_s"] > 0
    payload = read_checkpoint(RunDir(tmp_path / "seq").last)
    assert len(payload["optimizer"]) == losses  # one optimizer per local loss, not per stage
    records = _train_records(RunDir(tmp_path / "seq"))
    assert {f"stage{k}_loss" for k in range(losses)} <= set(records[3]) and "stage2_loss" not in records[3]
    assert all(math.isfinite(records[s]["loss"]) for s in (1, 2, 3))
    seq, pipe = checkpoint_weights(RunDir(tmp_path / "seq").last), checkpoint_weights(RunDir(tmp_path / "pipe").last)
    for key in seq:
        assert torch.equal(seq[key], pipe[key]), key
    heads = read_checkpoint(RunDir(tmp_path / "pipe").last)["extra_state"]["local_heads"]
    reference = payload["extra_state"]["local_heads"]
    assert heads.keys() == reference.keys() and all(torch.equal(heads[k], reference[k]) for k in reference)


def test_stage_recall_scores_every_unit_and_the_last_is_the_models_own(sequential_run, synth_dataset):
    from retrieval.evaluate import evaluate, load_eval_set
    from retrieval.train.local_probe import stage_recall

    stages = stage_recall(sequential_run.last, split="val")
    assert len(stages) == 2 and all(0 <= s["rsum"] <= 600 for s in stages)
    loaded = load_model(sequential_run.last, device="cpu")
    own = evaluate(loaded, load_eval_set(loaded.config["data"], "val"))
    assert stages[-1]["rsum"] == pytest.approx(own["rsum"], abs=1e-6)
    with pytest.raises(UserError, match="has no local heads"):
        stage_recall(_bp_checkpoint(synth_dataset, sequential_run.root.parent / "bp"), split="val")


def _bp_checkpoint(dataset, out):
    from retrieval.train.loop import train_bp

    train_bp(load_config(None, train_overrides(dataset, "training.max_steps=1")), out)
    return RunDir(out).last


def test_cross_targets_refuse_the_pipeline(synth_dataset, tmp_path):
    with pytest.raises(UserError, match="local_targets=cross needs .*pipeline=false"):
        train_local(local_config(synth_dataset, "training.local_targets=cross", "training.pipeline=true"), tmp_path / "r")


RESNET = ["model.vision_cfg={image_size: 32, layers: [1, 1, 1, 1], width: 8, head_width: 16}", "training.stages=2"]


@pytest.mark.slow  # ~40 s: two trainings with pipeline start-up; the ViT twin above runs by default
def test_resnet_auglocal_heads_pipeline_to_the_sequential_weights(synth_dataset, tmp_path):
    """Conv heads carry batch-norm statistics and a fresh bottleneck: they too must travel bit for bit."""
    extra = [*RESNET, "training.local_head=auglocal", "training.max_steps=3"]
    train_local(local_config(synth_dataset, *extra), tmp_path / "seq")
    train_local(local_config(synth_dataset, *extra, "training.pipeline=true"), tmp_path / "pipe")
    seq, pipe = (read_checkpoint(RunDir(tmp_path / name).last) for name in ("seq", "pipe"))
    for key, value in seq["model"].items():
        assert torch.equal(pipe["model"][key], value), key
    heads = seq["extra_state"]["local_heads"]
    assert any("running_mean" in k for k in heads)  # the head's own batch-norm statistics are saved
    assert all(torch.equal(pipe["extra_state"]["local_heads"][k], v) for k, v in heads.items())
