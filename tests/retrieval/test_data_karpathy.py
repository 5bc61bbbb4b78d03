"""Karpathy split JSON loading: splits, COCO layout, and one clear error (or a count) per bad entry."""

from __future__ import annotations

import logging

import pytest
from data_testing import karpathy_entry, write_karpathy, write_png

from retrieval.data import load_records, scan_records
from retrieval.errors import UserError


def test_loads_requested_splits_with_all_captions(make_karpathy):
    ds = make_karpathy({"train": 3, "val": 1, "test": 2}, captions=5)
    train = load_records(ds.cfg(), ["train"])
    test = load_records(ds.cfg(), "test")
    assert [r.split for r in train] == ["train"] * 3 and len(test) == 2
    assert [len(r.captions) for r in train + test] == [5] * 5
    assert train[0].path == ds.images / "img000.png" and train[0].captions[2] == "picture 0 caption 2"
    assert train[0].meta == {"imgid": 0}
    assert "images[0]" in train[0].source and "img000.png" in train[0].source


def test_coco_filepath_and_restval(tmp_path):
    write_png(tmp_path / "coco" / "val2014" / "a.jpg")
    write_png(tmp_path / "coco" / "train2014" / "b.jpg")
    entries = [
        karpathy_entry("a.jpg", "restval", ["a cat"], filepath="val2014", cocoid=1),
        karpathy_entry("b.jpg", "train", ["a dog"], filepath="train2014", cocoid=2),
    ]
    cfg = {"format": "karpathy", "path": str(write_karpathy(tmp_path / "dataset_coco.json", entries)),
           "images": str(tmp_path / "coco")}
    records = load_records(cfg, ["train", "restval"])
    assert sorted(r.path.relative_to(tmp_path).as_posix() for r in records) == ["coco/train2014/b.jpg",
                                                                                 "coco/val2014/a.jpg"]
    assert [r.meta["cocoid"] for r in load_records(cfg, "train")] == [2]


def test_tokens_only_sentences_and_default_image_root(tmp_path):
    write_png(tmp_path / "x.png")
    entry = {"filename": "x.png", "split": "test", "sentences": [{"tokens": ["two", "red", "stars"]}]}
    path = write_karpathy(tmp_path / "d.json", [entry])
    (record,) = load_records({"format": "karpathy", "path": str(path), "images": None}, "test")
    assert record.captions == ["two red stars"] and record.path == tmp_path / "x.png"


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"filename": "a.png",, "split": "train"}\n]}')
    with pytest.raises(UserError, match=r"broken\.json:2:\d+: not valid JSON"):
        load_records({"format": "karpathy", "path": str(path)}, "train")


def test_wrong_top_level_and_missing_file(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a Karpathy split file"):
        load_records({"format": "karpathy", "path": str(tmp_path / "list.json")}, "train")
    with pytest.raises(UserError, match="data file not found"):
        load_records({"format": "karpathy", "path": str(tmp_path / "nope.json")}, "train")


def test_missing_image_names_file_and_entry(make_karpathy):
    ds = make_karpathy({"train": 3})
    (ds.images / "img001.png").unlink()
    with pytest.raises(UserError, match=r"images\[1\] \(img001\.png\): image file not found: .*img001\.png"):
        load_records(ds.cfg(), "train")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e[1]["sentences"][0].update(raw="   "), r"images\[1\] \(img001.png\): caption 0 is empty"),
        (lambda e: e[2].update(split="dev"), r"images\[2\] \(img002.png\): unknown split 'dev'"),
        (lambda e: e[0].pop("sentences"), r"images\[0\] \(img000.png\): expected a \"sentences\" list"),
        (lambda e: e[0].pop("filename"), r"images\[0\]: expected an object with a \"filename\""),
    ],
)
def test_bad_entries_raise_one_clear_error(make_karpathy, mutate, message):
    ds = make_karpathy({"train": 3})
    mutate(ds.entries)
    write_karpathy(ds.data, ds.entries)
    with pytest.raises(UserError, match=message):
        load_records(ds.cfg(), "train")


def test_skip_bad_skips_counts_and_logs_one_line(make_karpathy, caplog):
    ds = make_karpathy({"train": 6}, captions=2)
    (ds.images / "img000.png").unlink()
    (ds.images / "img001.png").unlink()
    ds.entries[2]["split"] = "dev"
    ds.entries[3]["sentences"][0]["raw"] = ""  # one empty caption: the image stays with the other
    ds.entries[4]["sentences"] = [{"raw": ""}, {"raw": " "}]  # no caption left: the image goes
    write_karpathy(ds.data, ds.entries)
    with caplog.at_level(logging.WARNING):
        records, problems = scan_records(ds.cfg(skip_bad=True), "train")
    assert [r.path.name for r in records] == ["img003.png", "img005.png"]
    assert records[0].captions == ["picture 3 caption 1"]
    summary = "skipped 4 of 6 images: 2 missing, 1 unknown split, 1 no captions; 3 empty captions"
    assert problems.summary() == summary
    assert [r.getMessage() for r in caplog.records] == [f"{ds.data}: {summary}"]


def test_unknown_requested_split_and_empty_split(make_karpathy):
    ds = make_karpathy({"train": 2})
    with pytest.raises(UserError, match="unknown split 'tst'"):
        load_records(ds.cfg(), "tst")
    with pytest.raises(UserError, match="no usable images in split"):
        load_records(ds.cfg(), "test")
