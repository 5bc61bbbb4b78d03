"""The backprop trainer end to end on the tiny synth dataset: run directory, learning, checkpoints, eval."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from train_testing import checkpoint_weights, max_weight_difference, one_thread, train_config  # noqa: F401

from retrieval.checkpoint import load_model, read_checkpoint
from retrieval.cli import main as cli
from retrieval.config import load_config
from retrieval.model import build_towers
from retrieval.train import RunDir, train_bp
from retrieval.train.distributed import DistEnv
from retrieval.train.optim import build_optimizer, build_scheduler, cosine_with_warmup
from retrieval.train.step import build_loss, train_step


@pytest.fixture(scope="module")
def tiny_run(synth_dataset, tmp_path_factory):
    """One 3-epoch run (18 steps of 8) of the tiny ENN-penalty model; returns (config, summary, RunDir)."""
    cfg = train_config(synth_dataset, "training.epochs=3")
    out = tmp_path_factory.mktemp("runs") / "tiny"
    summary = train_bp(cfg, out)
    return cfg, summary, RunDir(out)


def test_run_directory_holds_config_checkpoints_metrics_and_curves(tiny_run):
    cfg, summary, run = tiny_run
    assert load_config(run.config) == cfg  # the resolved config, loadable as a run config
    assert run.last.is_file() and run.best.is_file() and run.curves.stat().st_size > 0
    records = run.read_metrics()
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 19))
    assert [r["step"] for r in val] == [6, 12, 18]  # one validation per epoch
    for key in ("loss", "lr", "temperature", "orthogonality_error", "samples_per_s", "wall_s"):
        assert all(math.isfinite(r[key]) for r in train), key
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
        assert all(0 <= r[key] <= (600 if key == "rsum" else 100) for r in val), key
    assert summary["step"] == 18 and summary["epoch"] == 3


def test_loss_goes_down_and_lr_follows_warmup_then_cosine(tiny_run):
    _, _, run = tiny_run
    train = [r for r in run.read_metrics() if r["kind"] == "train"]
    first = sum(r["loss"] for r in train[:3]) / 3
    last = sum(r["loss"] for r in train[-3:]) / 3
    assert last < first - 0.1, (first, last)
    # the lr each step used: warm-up over 2 steps, then a cosine reaching 0 after the 18th (last) step
    expected = [2e-3 * cosine_with_warmup(r["step"] - 1, 2, 18) for r in train]
    assert [r["lr"] for r in train] == pytest.approx(expected, rel=1e-9)
    assert expected[0] == pytest.approx(1e-3) and 0 < expected[-1] < 2e-5


def test_best_checkpoint_is_the_best_validation_and_eval_reproduces_it(tiny_run, synth_dataset, tmp_path):
    _, summary, run = tiny_run
    val = [r for r in run.read_metrics() if r["kind"] == "val"]
    best = max(val, key=lambda r: r["rsum"])
    payload = torch.load(run.best, map_location="cpu", weights_only=False)
    assert payload["step"] == best["step"] == summary["best_step"]
    assert payload["metrics"]["rsum"] == best["rsum"]
    out = tmp_path / "eval.json"
    code = cli(["eval", "--checkpoint", str(run.root), "--data", str(synth_dataset.data),
                "--images", str(synth_dataset.images), "--split", "val", "--json", str(out), "--device", "cpu"])
    assert code == 0
    reported = json.loads(out.read_text())["results"]["model"]
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "i2t_meanr", "t2i_meanr"):
        assert reported[key] == pytest.approx(best[key], abs=1e-6), key


def test_last_checkpoint_records_where_training_stopped(tiny_run):
    _, _, run = tiny_run
    payload = torch.load(run.last, map_location="cpu", weights_only=False)
    assert (payload["step"], payload["epoch"], payload["batch_in_epoch"]) == (18, 3, 0)
    assert {"optimizer", "scheduler", "rng", "progress", "config", "model"} <= payload.keys()
    assert payload["scheduler"]["last_epoch"] == 18
    logit_scale = float(payload["model"]["logit_scale"])
    assert 0 < logit_scale <= math.log(100.0) + 1e-6


def test_temperature_is_clamped_to_max_logit_scale(synth_dataset, tmp_path):
    cfg = train_config(synth_dataset, "training.max_steps=1", "training.init_temperature=0.01",
                       "training.max_logit_scale=20.0", "data.val_split=null")
    train_bp(cfg, tmp_path / "run")
    saved = checkpoint_weights(RunDir(tmp_path / "run").last)
    assert float(saved["logit_scale"]) == pytest.approx(math.log(20.0))


def test_accumulating_a_batch_twice_equals_one_step_on_it(tiny_config):
    env = DistEnv.single()
    torch.manual_seed(0)
    images, tokens = torch.randn(6, 3, 32, 32), torch.randint(1, 400, (6, 16))
    results = []
    for micro in ([(images, tokens)], [(images, tokens), (images, tokens)]):
        torch.manual_seed(1)
        model = build_towers(tiny_config).model
        optimizer = build_optimizer(model, tiny_config["training"])
        scheduler = build_scheduler(optimizer, tiny_config["training"], total_steps=10)
        step = train_step(model, model, micro, build_loss(env), optimizer, scheduler, tiny_config, env)
        results.append((step, {k: v.clone() for k, v in model.state_dict().items()}))
    (one, weights_one), (two, weights_two) = results
    assert two.loss == pytest.approx(one.loss, rel=1e-6)
    assert max_weight_difference(weights_one, weights_two) < 1e-6
    assert max_weight_difference(weights_one, build_towers(tiny_config).model.state_dict()) > 1e-4


def test_fine_tuning_starts_from_the_pretrained_function(synth_dataset, tmp_path):
    plain_cfg = train_config(synth_dataset, "enn.enabled=false")
    torch.manual_seed(123)
    plain = build_towers(plain_cfg)
    with torch.no_grad():
        plain.model.logit_scale.fill_(2.5)
    weights = tmp_path / "plain.pt"
    torch.save({"state_dict": plain.model.state_dict()}, weights)
    # lr = 0: the one step leaves the weights as they started, so best.pt is the model at step 0.
    cfg = train_config(synth_dataset, f"model.pretrained={weights}", "training.lr=0.0", "training.max_steps=1")
    train_bp(cfg, tmp_path / "run")
    best = RunDir(tmp_path / "run").best
    assert any(".parametrizations." in k for k in read_checkpoint(best)["model"])  # trained in ENN form
    loaded = load_model(best, device="cpu")  # merged to plain weights for inference
    assert float(loaded.model.logit_scale.detach()) == pytest.approx(2.5)  # the pretrained temperature is kept
    pixels = torch.stack([plain.preprocess_val(Image.open(p).convert("RGB")) for p in
                          sorted(synth_dataset.images.iterdir())[:4]])
    tokens = plain.tokenizer(["a red circle", "two blue squares above a star"])
    plain.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(pixels), plain.model.encode_image(pixels),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loaded.model.encode_text(tokens), plain.model.encode_text(tokens),
                                   atol=1e-4, rtol=1e-4)


def test_cpu_threads_leave_room_for_data_workers(tiny_config, monkeypatch):
    from retrieval.train.session import set_cpu_threads

    env = DistEnv.single()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    tiny_config["training"]["threads"] = None
    tiny_config["data"]["workers"] = 1
    assert set_cpu_threads(tiny_config, env) == 3 == torch.get_num_threads()
    tiny_config["data"]["workers"] = 8
    assert set_cpu_threads(tiny_config, env) == 1
    tiny_config["training"]["threads"] = 2
    assert set_cpu_threads(tiny_config, env) == 2
    torch.set_num_threads(1)
