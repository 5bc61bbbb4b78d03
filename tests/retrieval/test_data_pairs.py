"""CSV/TSV/JSONL pairs: configurable columns and separator, grouping by image, splits, clear errors."""

from __future__ import annotations

import json

import pytest
from data_testing import write_png

from retrieval.data import load_records, scan_records
from retrieval.errors import UserError


def pairs_cfg(path, **overrides):
    return {"format": "csv", "path": str(path), "images": None, "csv_img_key": "filepath",
            "csv_caption_key": "title", "csv_separator": "\t", **overrides}


def test_tsv_rows_of_one_image_become_one_record(tmp_path):
    write_png(tmp_path / "imgs" / "a.png")
    write_png(tmp_path / "imgs" / "b.png")
    (tmp_path / "pairs.tsv").write_text(
        "filepath\ttitle\nimgs/a.png\ta red circle\nimgs/b.png\ta blue square\nimgs/a.png\ta round red thing\n"
    )
    records = load_records(pairs_cfg(tmp_path / "pairs.tsv"), "test")
    assert [(r.path.name, r.captions) for r in records] == [
        ("a.png", ["a red circle", "a round red thing"]),
        ("b.png", ["a blue square"]),
    ]
    assert records[0].source.endswith("pairs.tsv:2") and records[0].split == "test"


def test_csv_custom_columns_separator_and_image_root(tmp_path):
    write_png(tmp_path / "root" / "x.png")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "pairs.csv").write_text('image,text\nx.png,"a star, small"\n')
    cfg = pairs_cfg(tmp_path / "meta" / "pairs.csv", csv_img_key="image", csv_caption_key="text",
                    csv_separator=",", images=str(tmp_path / "root"))
    (record,) = load_records(cfg, "train")
    assert record.path == tmp_path / "root" / "x.png" and record.captions == ["a star, small"]


def test_missing_column_names_the_header_and_the_separator(tmp_path):
    (tmp_path / "p.csv").write_text("image,text\nx.png,hi\n")
    with pytest.raises(UserError, match=r"p\.csv:1: no column 'filepath' .*'image,text'.*separator '\\t'"):
        load_records(pairs_cfg(tmp_path / "p.csv"), "train")


def test_jsonl_with_caption_lists_and_split_key(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / name)
    rows = [
        {"filepath": "a.png", "title": ["one", "two"], "split": "train"},
        {"filepath": "b.png", "title": "three", "split": "test"},
        {"filepath": "c.png", "title": "four", "split": "train"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = load_records(pairs_cfg(path), ["train"])
    assert [(r.path.name, r.captions) for r in train] == [("a.png", ["one", "two"]), ("c.png", ["four"])]
    assert [r.path.name for r in load_records(pairs_cfg(path), "test")] == ["b.png"]


def test_split_placeholder_reads_one_file_per_split(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    (tmp_path / "pairs_train.tsv").write_text("filepath\ttitle\na.png\tfirst\n")
    (tmp_path / "pairs_val.tsv").write_text("filepath\ttitle\nb.png\tsecond\n")
    records = load_records(pairs_cfg(tmp_path / "pairs_{split}.tsv"), ["train", "val"])
    assert [(r.path.name, r.split) for r in records] == [("a.png", "train"), ("b.png", "val")]


def test_bad_jsonl_line_names_line_and_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"filepath": "a.png", "title": "x"}\n{"filepath": "b.png" "title": "y"}\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2:\d+: not valid JSON"):
        load_records(pairs_cfg(path), "train")


def test_bad_rows_error_or_are_counted(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "p.tsv").write_text("filepath\ttitle\na.png\tfine\nmissing.png\tgone\na.png\t\nextra\tfields\there\n")
    with pytest.raises(UserError, match=r"p\.tsv:4: caption 0 is empty"):
        load_records(pairs_cfg(tmp_path / "p.tsv"), "train")
    (tmp_path / "q.tsv").write_text("filepath\ttitle\na.png\tfine\nmissing.png\tgone\n")
    with pytest.raises(UserError, match=r"q\.tsv:3: image file not found: .*missing\.png"):
        load_records(pairs_cfg(tmp_path / "q.tsv"), "train")
    records, problems = scan_records(pairs_cfg(tmp_path / "p.tsv"), "train", skip_bad=True)
    assert [(r.path.name, r.captions) for r in records] == [("a.png", ["fine"])]
    assert problems.summary() == "skipped 2 of 3 images: 1 missing, 1 malformed; 1 empty captions"
