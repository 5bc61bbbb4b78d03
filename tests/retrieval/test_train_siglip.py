"""`training.loss: siglip`: open_clip's SigLipLoss with the model's learnable logit bias, end to end."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss
from train_testing import checkpoint_weights, max_weight_difference, one_thread, train_config  # noqa: F401

from retrieval.checkpoint import load_model, read_checkpoint
from retrieval.cli import main as cli
from retrieval.config import load_config
from retrieval.errors import UserError
from retrieval.export import load_source, write_open_clip_dir
from retrieval.model import build_towers
from retrieval.train import RunDir, train_bp
from retrieval.train.distributed import DistEnv
from retrieval.train.optim import param_groups
from retrieval.train.step import build_loss, forward_loss, set_temperature

CPU = DistEnv.single()


def _siglip_towers(synth_dataset, *extra: str):
    cfg = train_config(synth_dataset, "training.loss=siglip", *extra)
    torch.manual_seed(0)
    towers = build_towers(cfg)
    set_temperature(towers.model, float(cfg["training"]["init_temperature"]))
    return cfg, towers


def _batch(cfg, towers, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    size = cfg["model"]["vision_cfg"]["image_size"]
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    colours = ["red", "green", "blue", "cyan", "magenta", "yellow"][:n]
    tokens = towers.tokenizer([f"a {c} square above a {c} star" for c in colours])
    return images, tokens


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_siglip_loss_is_open_clips_on_the_same_features_from_siglips_start(synth_dataset, ortho):
    cfg, towers = _siglip_towers(synth_dataset, f"enn.ortho={ortho}")
    model = towers.model
    # open_clip_train --siglip's start: logit_scale = log 10, logit_bias = -10 (init_temperature unused)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(10))
    assert float(model.logit_bias.detach()) == pytest.approx(-10.0)
    assert towers.model_cfg["init_logit_bias"] == -10.0
    images, tokens = _batch(cfg, towers)
    loss_fn = build_loss(CPU, "siglip")
    assert isinstance(loss_fn, SigLipLoss) and (loss_fn.rank, loss_fn.world_size) == (0, 1)
    # move off the start values, so that scale and bias both matter in the comparison
    with torch.no_grad():
        model.logit_scale.fill_(1.3)
        model.logit_bias.fill_(-2.5)
    got = forward_loss(model, loss_fn, images, tokens)
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        want = SigLipLoss()(img, txt, model.logit_scale.exp(), model.logit_bias)
        # the formula itself: −Σ log σ(z_ij · (t·⟨x_i, y_j⟩ + b)) / n, z = +1 on the diagonal, −1 elsewhere
        logits = math.exp(1.3) * img @ txt.T - 2.5
        signs = 2 * torch.eye(len(images)) - 1
        by_hand = -F.logsigmoid(signs * logits).sum() / len(images)
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-6)
    assert float(got.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    got.backward()
    assert model.logit_bias.grad is not None and float(model.logit_bias.grad) != 0.0


def test_clip_loss_keeps_its_model_and_start(synth_dataset):
    cfg = train_config(synth_dataset)
    assert cfg["training"]["loss"] == "clip"
    towers = build_towers(cfg)
    set_temperature(towers.model, 0.07)
    assert towers.model.logit_bias is None and "init_logit_bias" not in towers.model_cfg
    assert float(towers.model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))


def test_logit_bias_is_trained_without_weight_decay(synth_dataset):
    _, towers = _siglip_towers(synth_dataset)
    decayed, not_decayed = param_groups(towers.model, 0.1)
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    bias = towers.model.logit_bias
    assert any(p is bias for p in not_decayed["params"])
    assert not any(p is bias for p in decayed["params"])


@pytest.fixture(scope="module")
def siglip_run(synth_dataset, tmp_path_factory):
    """12 steps (2 epochs of 6) of the tiny ENN model on the sigmoid loss."""
    out = tmp_path_factory.mktemp("siglip") / "run"
    summary = train_bp(train_config(synth_dataset, "training.loss=siglip"), out)
    return summary, RunDir(out)


def test_tiny_siglip_run_lowers_the_loss_and_learns_the_bias(siglip_run):
    summary, run = siglip_run
    assert summary["step"] == 12
    train = [r for r in run.read_metrics() if r["kind"] == "train"]
    first = sum(r["loss"] for r in train[:3]) / 3
    last = sum(r["loss"] for r in train[-3:]) / 3
    assert last < first - 0.1, (first, last)
    assert all(math.isfinite(r["logit_bias"]) for r in train)
    assert train[-1]["logit_bias"] != pytest.approx(-10.0, abs=1e-4)  # the bias is learned


def test_checkpoint_eval_and_export_keep_the_logit_bias(siglip_run, tmp_path):
    _, run = siglip_run
    payload = read_checkpoint(run.last)
    bias = payload["model"]["logit_bias"]
    assert payload["config"]["training"]["loss"] == "siglip"
    assert payload["model_cfg"]["init_logit_bias"] == -10.0  # rebuilds a model that has the parameter
    loaded = load_model(run.last, device="cpu")
    assert torch.equal(loaded.model.logit_bias.detach(), bias)
    out = tmp_path / "oc"
    write_open_clip_dir(load_source(run.last), out)  # checks the towers' embeddings against the checkpoint
    exported = open_clip.create_model(f"local-dir:{out}")
    assert torch.equal(exported.logit_bias.detach(), bias)
    assert torch.equal(exported.logit_scale.detach(), payload["model"]["logit_scale"])


def test_siglip_run_resumes_exactly(synth_dataset, siglip_run, tmp_path):
    _, full = siglip_run
    out = tmp_path / "run"
    train_bp(train_config(synth_dataset, "training.loss=siglip", "training.max_steps=9"), out)
    assert train_bp(train_config(synth_dataset, "training.loss=siglip"), out, resume=True)["step"] == 12
    resumed, expected = checkpoint_weights(RunDir(out).last), checkpoint_weights(full.last)
    assert max_weight_difference(resumed, expected) < 1e-5
    assert float(resumed["logit_bias"]) == pytest.approx(float(expected["logit_bias"]), abs=1e-6)


def test_resuming_with_another_loss_is_refused(synth_dataset, siglip_run):
    _, run = siglip_run
    with pytest.raises(UserError, match="training.loss=siglip, the config says clip"):
        train_bp(train_config(synth_dataset), run.root, resume=True)


def test_bad_loss_value_is_one_clear_line(synth_dataset, tmp_path, capsys):
    with pytest.raises(UserError, match=r"training.loss must be one of clip, siglip; got 'sigmoid'"):
        load_config(None, ["training.loss=sigmoid"])
    code = cli(["train", "--config", "configs/synth-tiny.yaml", "--out", str(tmp_path / "r"),
                "--set", "training.loss=softmax"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == ["retrieval train: error: config key training.loss must be one of clip, siglip; "
                                "got 'softmax'"]
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="training.loss=siglip is for training.method=bp"):
        load_config(None, ["training.loss=siglip", "training.method=local"])
    with pytest.raises(UserError, match="training.loss must be one of"):
        build_loss(CPU, "sigmoid")
