"""`retrieval data synth` and `retrieval data check` through the CLI entry point."""

from __future__ import annotations

import json

from data_testing import write_png

from retrieval.cli import main as cli


def test_synth_then_check(tmp_path, capsys):
    out = tmp_path / "synth"
    assert cli(["data", "synth", "--out", str(out), "--images", "20", "--size", "24", "--workers", "1"]) == 0
    assert "20 images (train 16, val 2, test 2)" in capsys.readouterr().out
    data = json.loads((out / "dataset.json").read_text())
    assert data["dataset"] == "synth" and len(data["images"]) == 20
    assert cli(["data", "check", "--data", str(out / "dataset.json"), "--images", str(out / "images")]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    assert lines["train"][:2] == ["16", "80"] and lines["test"][:2] == ["2", "10"] and lines["total"][:2] == ["20", "100"]
    assert "problems: none" in printed and "decoding: 20 images read" in printed


def test_check_stops_at_the_first_problem_or_counts_all(make_karpathy, capsys):
    ds = make_karpathy({"train": 4, "test": 2}, captions=2)
    (ds.images / "img001.png").write_bytes(b"\x89PNG broken")
    (ds.images / "img004.png").unlink()
    args = ["data", "check", "--data", str(ds.data), "--images", str(ds.images)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "images[4] (img004.png): image file not found" in err
    assert cli([*args, "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 of 6 images: 1 missing, 1 unreadable" in printed and "img001.png" in printed
    assert "decoding: 4 images read" in printed


def test_check_reads_csv_with_options(tmp_path, capsys):
    write_png(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text("image,text\na.png,one\na.png,two\n")
    assert cli(["data", "check", "--data", str(tmp_path / "pairs.csv"), "--csv-separator", ",",
                "--csv-img-key", "image", "--csv-caption-key", "text"]) == 0
    assert "(csv)" in capsys.readouterr().out
    assert cli(["data", "check", "--data", str(tmp_path / "pairs.csv")]) == 2
    assert "no column 'filepath'" in capsys.readouterr().err
