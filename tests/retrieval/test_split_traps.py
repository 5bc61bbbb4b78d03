"""A pairs file without a split column cannot be both training and held-out data: refused, not silently used."""

from __future__ import annotations

import json

import pytest
import torch
from train_testing import one_thread, train_overrides  # noqa: F401

from retrieval.cli import main as cli
from retrieval.config import defaults, load_config, save_config
from retrieval.data.records import load_records, split_problem
from retrieval.errors import UserError


def _pairs_file(dataset, path, with_split: bool):
    """A TSV of the synth dataset's images and captions, with or without its split column."""
    header = "filepath\ttitle" + ("\tsplit" if with_split else "")
    rows = [header]
    for image in dataset.entries:
        for sentence in image["sentences"][:2]:
            cells = [str(dataset.images / image["filename"]), sentence["raw"]]
            rows.append("\t".join(cells + ([image["split"]] if with_split else [])))
    path.write_text("\n".join(rows) + "\n")
    return path


def _train(capsys, dataset, tsv, out, *extra):
    overrides = train_overrides(dataset, "data.format=csv", f"data.path={tsv}", "data.images=null",
                                "training.epochs=1", *extra)
    config = out.parent / "run.yaml"
    save_config(load_config(None, overrides), config)
    code = cli(["train", "--config", str(config), "--out", str(out)])
    return code, capsys.readouterr()


def test_split_problem_only_for_pairs_files_that_name_no_split(tmp_path, synth_dataset):
    assert split_problem({"format": "karpathy", "path": str(synth_dataset.data)}) is None
    plain = _pairs_file(synth_dataset, tmp_path / "plain.tsv", with_split=False)
    split = _pairs_file(synth_dataset, tmp_path / "split.tsv", with_split=True)
    cfg = {"format": "csv", "csv_separator": "\t"}
    assert "no 'split' column" in split_problem({**cfg, "path": str(plain)})
    assert split_problem({**cfg, "path": str(split)}) is None
    assert split_problem({**cfg, "path": str(tmp_path / "pairs_{split}.tsv")}) is None


@pytest.mark.parametrize("splits, first_without", [((None, "val", "test"), 1), (("val", "test", None, None), 3),
                                                   (("val", "", "test"), 2)])
@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_a_file_where_some_lines_name_no_split_is_refused_naming_the_first(tmp_path, splits, first_without, suffix):
    # Lines without a split would join whichever split is read: training rows in training, test rows in eval.
    path = tmp_path / f"mixed{suffix}"
    if suffix == ".jsonl":
        lines = [json.dumps({"filepath": f"{i}.png", "title": "x", **({"split": s} if s is not None else {})})
                 for i, s in enumerate(splits)]
        line_no = first_without
    else:
        lines = ["filepath\ttitle\tsplit"] + [f"{i}.png\tx\t{s or ''}" for i, s in enumerate(splits)]
        line_no = first_without + 1  # after the header
    path.write_text("\n".join(lines) + "\n")
    cfg = {**defaults()["data"], "format": "csv", "path": str(path), "images": str(tmp_path)}
    for split in ("train", "test"):
        with pytest.raises(UserError, match=rf"mixed{suffix}:{line_no}: no 'split' on this line"):
            load_records(cfg, split)


def test_training_on_a_split_less_file_with_validation_is_refused_in_one_line(capsys, tmp_path, synth_dataset):
    tsv = _pairs_file(synth_dataset, tmp_path / "pairs.tsv", with_split=False)
    code, out = _train(capsys, synth_dataset, tsv, tmp_path / "run")
    lines = [line for line in out.err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out.err
    for way_out in ("'split' column", "{split}", "data.val_split: null"):
        assert way_out in lines[0]
    assert not (tmp_path / "run").exists()


def test_without_validation_no_recall_is_reported_and_best_is_the_last_checkpoint(capsys, tmp_path, synth_dataset):
    tsv = _pairs_file(synth_dataset, tmp_path / "pairs.tsv", with_split=False)
    code, out = _train(capsys, synth_dataset, tsv, tmp_path / "run", "data.val_split=null")
    assert code == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["best_rsum"] is None and summary["best"] == "last checkpoint"
    assert summary["best_step"] == summary["step"]
    assert "best.pt is the last checkpoint" in out.out
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == summary["step"]
    # Evaluating the file it was trained on would report training recall: refused.
    code = cli(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "no 'split' column" in err and "Traceback" not in err
