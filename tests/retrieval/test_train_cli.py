"""`retrieval train` on bad input: one line, exit 2, before any work (no run directory is written)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from train_testing import one_thread, train_overrides  # noqa: F401

from retrieval.cli import main as cli
from retrieval.commands.train import trainer
from retrieval.errors import UserError
from retrieval.train import train_bp


def _train(capsys, *args: str) -> tuple[int, str]:
    code = cli(["train", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def _config(tmp_path, dataset, *extra: str):
    """A YAML run config written from --set style overrides (via load_config, so it is valid)."""
    from retrieval.config import load_config, save_config

    path = tmp_path / "run.yaml"
    save_config(load_config(None, train_overrides(dataset, *extra)), path)
    return path


def _error_line(code: int, err: str) -> str:
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("retrieval train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_unknown_config_key(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", "training.lrr=1e-3"))
    assert "training.lrr" in line and "training.lr" in line.split("did you mean")[1]
    raw = yaml.safe_load(config.read_text())
    raw["training"]["warmup"] = 10
    config.write_text(yaml.safe_dump(raw))
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r")))
    assert "training.warmup" in line
    assert not (tmp_path / "r").exists()


def test_missing_data_file_and_image_folder(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    missing = tmp_path / "nope" / "dataset.json"
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", f"data.path={missing}"))
    assert str(missing) in line
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", f"data.images={tmp_path / 'no-images'}"))
    assert "no-images" in line
    assert not (tmp_path / "r").exists()


def test_tower_embed_dims_must_agree(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", "model.text_cfg.embed_dim=24"))
    assert "model.text_cfg.embed_dim=24" in line and "model.embed_dim=16" in line


def test_missing_config_file_and_missing_config(capsys, tmp_path):
    line = _error_line(*_train(capsys, "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")))
    assert "missing.yaml" in line
    line = _error_line(*_train(capsys, "--out", str(tmp_path / "r")))
    assert "--config is required" in line


def test_resume_without_a_checkpoint(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"), "--resume"))
    assert "last.pt" in line and "does not exist" in line
    line = _error_line(*_train(capsys, "--out", str(tmp_path / "r"), "--resume"))
    assert "config.yaml" in line


def test_bad_thread_count(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", "training.threads=0"))
    assert "training.threads" in line


def test_batch_larger_than_the_training_set(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset)
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(tmp_path / "r"),
                               "--set", "training.batch_size=64"))
    assert "batch_size=64" in line and "48 samples" in line


def test_fresh_run_refuses_to_overwrite_a_run_and_resume_refuses_another_model(capsys, tmp_path, synth_dataset):
    config = _config(tmp_path, synth_dataset, "training.max_steps=1", "data.val_split=null")
    out = tmp_path / "r"
    assert _train(capsys, "--config", str(config), "--out", str(out))[0] == 0
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(out)))
    assert "--resume" in line
    line = _error_line(*_train(capsys, "--config", str(config), "--out", str(out), "--resume",
                               "--set", "model.embed_dim=8"))
    assert "`model` section differs" in line
    # resuming with the run's own config.yaml (no --config), a larger max_steps continues the run
    code, err = _train(capsys, "--out", str(out), "--resume", "--set", "training.max_steps=2")
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["max_steps"] == 2


def test_method_dispatch():
    assert trainer("bp") is train_bp
    if importlib.util.find_spec("retrieval.train.local") is None:
        with pytest.raises(UserError, match="training.method=local"):
            trainer("local")
    else:
        from retrieval.train.local import train_local

        assert trainer("local") is train_local


def test_python_dash_m_retrieval_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "retrieval", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "usage: retrieval train" in result.stdout and "--resume" in result.stdout
