"""bench/trainer_vs_open_clip.py's pieces: both trainers read the same pairs, open_clip's own argument parser
accepts what we pass, and the samples/s windows are cut from the right steps of each trainer's log."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
from open_clip_train.data import CsvDataset
from open_clip_train.params import parse_args as open_clip_parse_args

from retrieval.config import load_config
from retrieval.data import load_records

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is scripts, not an installed package
    return importlib.import_module("bench.trainer_vs_open_clip")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from retrieval.data.synth.generate import generate

    out = tmp_path_factory.mktemp("synth") / "synth"
    data = generate(out, n_images=24, seed=5, size=16, workers=1, progress=False)
    return json.loads(data.read_text()), out / "images"


def test_open_clip_and_our_reader_see_the_same_pairs(bench, synth, tmp_path):
    dataset, images = synth
    train = [im for im in dataset["images"] if im["split"] == "train"]
    pairs = bench.training_pairs(dataset, images, 8, seed=0)
    assert [Path(p).name for p, _ in pairs] == [im["filename"] for im in train[:8]]
    assert all(c in [s["raw"] for s in im["sentences"]] for (_, c), im in zip(pairs, train, strict=False))
    assert len({c for _, c in pairs}) > 1 and bench.training_pairs(dataset, images, 8, seed=0) == pairs
    path = tmp_path / "pairs.tsv"
    bench.write_pairs(pairs, path)
    theirs = CsvDataset(str(path), transforms=None, img_key=bench.IMG_KEY, caption_key=bench.CAPTION_KEY, sep="\t")
    assert list(zip(theirs.images, theirs.captions, strict=True)) == pairs
    cfg = load_config(None, bench.our_overrides("plain", path, images, 4, 0, 1, "fp32", "cpu", 2))
    ours = load_records(cfg["data"], cfg["data"]["train_splits"])
    assert [(str(r.path), r.captions) for r in ours] == [(p, [c]) for p, c in pairs]
    assert (cfg["enn"]["enabled"], cfg["training"]["epochs"], cfg["training"]["log_every_steps"]) == (False, 1, 2)
    with pytest.raises(SystemExit, match="one epoch must cover the run"):
        bench.training_pairs(dataset, images, len(train) + 1, seed=0)


def test_open_clip_parser_takes_our_settings(bench):
    train_cfg = load_config("configs/synth-small.yaml", ["training.loss=siglip"])["training"]
    argv = bench.open_clip_argv("bench-x", Path("/d/pairs.tsv"), Path("/w/logs"), "plain-r0", 32, 1, "bf16", "cpu",
                                train_cfg)
    args = open_clip_parse_args(argv)
    assert (args.train_data, args.dataset_type, args.csv_separator) == ("/d/pairs.tsv", "csv", "\t")
    assert (args.csv_img_key, args.csv_caption_key, args.model) == ("filepath", "title", "bench-x")
    assert (args.batch_size, args.workers, args.precision, args.epochs) == (32, 1, "amp_bf16", 1)
    assert (args.lr, args.wd, args.beta1, args.beta2) == (1e-3, 0.1, 0.9, 0.98)
    assert (args.grad_clip_norm, args.log_every_n_steps, args.siglip) == (1.0, 1, True)


def _open_clip_line(step: int, per_epoch: int, batch: int, seconds: float) -> str:
    """A line as open_clip_train/train.py logs it (its f-string, with --log-every-n-steps 1)."""
    rate = batch / seconds
    return (f"2026-01-01,00:00:00 | INFO | Train Epoch: 0 [{step * batch:>4}/{per_epoch * batch} "
            f"({100 * step / per_epoch:.0f}%)] Data (t): 0.001 Batch (t): {seconds:.3f}, {rate:#g}/s, "
            f"{rate:#g}/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 2.0794 (2.0794) Loss: 2.0794 (2.0794)")


def test_open_clip_window_is_the_steps_after_warmup(bench):
    seconds = [5.0, 2.0, 0.5, 0.25, 0.25, 0.5]  # steps 1-2 warm-up, 3-6 timed
    log = "\n".join(["INFO | Start epoch 0", *(_open_clip_line(i + 1, 6, 32, s) for i, s in enumerate(seconds))])
    steps = bench.open_clip_step_seconds(log, 32)
    assert steps == pytest.approx({i + 1: s for i, s in enumerate(seconds)}, rel=1e-5)
    assert bench.timed_rate(steps, warmup=2, steps=4, batch=32) == pytest.approx(4 * 32 / 1.5, rel=1e-5)
    with pytest.raises(ValueError, match=r"step\(s\) \[7\]"):
        bench.timed_rate(steps, warmup=2, steps=5, batch=32)


def test_our_window_is_the_wall_time_between_the_warmup_and_last_records(bench):
    records = [{"kind": "train", "step": 2, "wall_s": 9.5}, {"kind": "train", "step": 4, "wall_s": 10.25},
               {"kind": "train", "step": 6, "wall_s": 11.0}, {"kind": "val", "step": 6, "wall_s": 14.0}]
    assert bench.ours_timed_seconds(records, warmup=2, steps=4) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no train record at step 3"):
        bench.ours_timed_seconds(records, warmup=3, steps=3)


def test_ratios_against_the_goals(bench):
    vs = bench.ratios({"open_clip": 100.0, "plain": 100.0, "enn-penalty": 96.0, "enn-exact": 94.0})
    assert {v: (round(r["x_open_clip"], 3), r["met"]) for v, r in vs.items()} == {
        "plain": (1.0, True), "enn-penalty": (0.96, True), "enn-exact": (0.94, False)}
    assert bench.ratios({"plain": 1.0}) == {}


def test_warmup_must_be_a_step(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--warmup", "0"])
    assert "--warmup must be ≥ 1" in capsys.readouterr().err
