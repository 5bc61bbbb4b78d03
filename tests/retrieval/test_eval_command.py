"""Dataset-level evaluation and the `retrieval eval` command, with a tiny real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.cli import main as cli
from retrieval.config import load_config
from retrieval.data import EvalSet, load_records
from retrieval.encode import encode_images, encode_texts
from retrieval.evaluate import evaluate, evaluate_embeddings, load_eval_set, random_embeddings
from retrieval.metrics import retrieval_metrics
from retrieval.model import build_towers

MODEL = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 32, patch_size: 16, width: 32, layers: 1, head_width: 16}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 1}",
]


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def checkpoint(synth_dataset, tmp_path_factory) -> Path:
    """A randomly initialised tiny model whose training config names the synth dataset."""
    cfg = load_config(None, [*MODEL, f"data.path={synth_dataset.data}", f"data.images={synth_dataset.images}",
                             "data.workers=0"])
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    save_checkpoint(path, build_towers(cfg), cfg)
    return path


def test_evaluate_equals_encoding_then_metrics(loaded, synth_dataset):
    eval_set = load_eval_set(synth_dataset.cfg(), "test")
    got = evaluate(loaded, eval_set, batch_size=4)
    # the independent path: the shared encoders on file paths, then the metric
    images = encode_images(loaded, eval_set.images, batch_size=5)
    texts = encode_texts(loaded, eval_set.captions, batch_size=7)
    expected = retrieval_metrics(images, texts, eval_set.text_to_image)
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(expected[k]) for k in got)


def test_fold_means_match_the_folds_themselves(make_karpathy):
    eval_set = EvalSet.from_records(load_records(make_karpathy({"test": 10}, captions=2).cfg(), "test"))
    rng = np.random.default_rng(0)
    images = random_embeddings(10, 8, seed=1)
    texts = (images[eval_set.text_to_image] + 0.8 * rng.standard_normal((20, 8))).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    folded = evaluate_embeddings(images, texts, eval_set, folds=5)
    per_fold = []
    for k, fold in enumerate(eval_set.folds(5)):
        rows = np.flatnonzero(eval_set.text_to_image // 2 == k)
        per_fold.append(retrieval_metrics(images[2 * k : 2 * k + 2], texts[rows], fold.text_to_image))
    assert folded["rsum"] == pytest.approx(np.mean([m["rsum"] for m in per_fold]))
    assert folded["t2i_r1"] == pytest.approx(np.mean([m["t2i_r1"] for m in per_fold]))
    assert folded != evaluate_embeddings(images, texts, eval_set)


def test_cli_prints_table_and_writes_json(checkpoint, loaded, synth_dataset, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = cli(["eval", "--checkpoint", str(checkpoint), "--data", str(synth_dataset.data), "--images",
                str(synth_dataset.images), "--split", "val", "--json", str(out), "--random-baseline", "--coco-1k",
                "--batch-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "image → text" in printed and "RSUM" in printed and "random" in printed
    report = json.loads(out.read_text())
    assert (report["split"], report["images"], report["captions"]) == ("val", 6, 30)
    assert set(report["results"]) == {"model", "model (5 folds)", "random", "random (5 folds)"}
    expected = evaluate(loaded, load_eval_set(synth_dataset.cfg(), "val"))
    assert report["results"]["model"] == pytest.approx(expected)
    assert report["fingerprint"] == loaded.fingerprint


def test_cli_takes_the_dataset_from_the_checkpoint_config(checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    assert cli(["eval", "--checkpoint", str(checkpoint), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 6


def test_cli_random_baseline_alone(synth_dataset, tmp_path):
    out = tmp_path / "eval.json"
    assert cli(["eval", "--data", str(synth_dataset.data), "--images", str(synth_dataset.images),
                "--random-baseline", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["results"]) == ["random"]


def test_cli_errors_are_one_line(synth_dataset, tmp_path, capsys):
    assert cli(["eval", "--data", str(synth_dataset.data)]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
    assert cli(["eval", "--data", str(tmp_path / "none.json"), "--random-baseline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data file not found" in err


def test_cli_names_a_truncated_image_or_skips_it(checkpoint, make_karpathy, tmp_path, capsys):
    from PIL import Image

    ds = make_karpathy({"test": 4}, captions=2)
    bad = ds.images / "img002.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:300])
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(ds.data), "--images", str(ds.images),
            "--workers", "1"]  # decoded in a DataLoader worker: its traceback must not reach the user
    assert cli(args) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # (above it: the progress bar)
    assert last.startswith("retrieval eval: error: cannot read image") and "img002.png" in last
    assert "images[2]" in last and "truncated" in last
    out = tmp_path / "eval.json"
    assert cli([*args, "--skip-bad", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 3
