"""`retrieval eval --index`: recall through the ANN index beside exact recall over the same vectors."""

from __future__ import annotations

import json

import pytest
import torch

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.cli import main
from retrieval.config import defaults, load_config
from retrieval.embed import embed_source, from_dataset, read_embeddings
from retrieval.errors import UserError
from retrieval.evaluate import encode_eval_set, evaluate_embeddings, load_eval_set
from retrieval.index import build_index
from retrieval.index.evaluate import evaluate_through_index
from retrieval.model import build_towers

TINY = [
    "model.embed_dim=16",
    "model.vision_cfg={image_size: 16, patch_size: 8, width: 32, layers: 1, head_width: 16}",
    "model.text_cfg={context_length: 16, width: 32, heads: 2, layers: 1}",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = load_config(None, TINY)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, build_towers(config), config)
    return path


def _index(tmp_path, dataset, checkpoint, splits, kind="hnsw"):
    cfg = {**defaults()["data"], **dataset.cfg()}
    embedded = embed_source(load_model(checkpoint), from_dataset(cfg, splits), tmp_path / f"emb-{kind}", progress=False)
    build_index(tmp_path / f"idx-{kind}", read_embeddings(embedded), kind=kind)
    return tmp_path / f"idx-{kind}", cfg


def test_exact_recall_through_the_store_matches_plain_evaluation(make_karpathy, checkpoint, tmp_path):
    dataset = make_karpathy({"train": 6, "test": 12}, captions=3)
    folder, cfg = _index(tmp_path, dataset, checkpoint, ["all"])  # the index holds more than the split
    eval_set = load_eval_set(cfg, "test")
    loaded = load_model(checkpoint)
    images, texts = encode_eval_set(loaded, eval_set)
    report = evaluate_through_index(folder, images, texts, eval_set, loaded.fingerprint)
    plain = evaluate_embeddings(images, texts, eval_set)
    exact, ann = report["rows"]["index exact"], report["rows"]["index (hnsw)"]
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert abs(exact[key] - plain[key]) <= 100 / 36 + 1e-9, key  # at most one near-tie flips
        assert abs(ann[key] - exact[key]) <= 100 / 36 + 1e-9, key  # a tiny HNSW graph is exact in practice
    assert set(report["ann_vs_exact_recall_at_10"]) == {"image", "text"}
    assert report["ann_vs_exact_recall_at_10"]["image"] >= 0.9


def test_recall_through_an_index_ten_times_larger_than_the_split_is_exact(make_karpathy, checkpoint, tmp_path):
    dataset = make_karpathy({"train": 120, "test": 12}, captions=2)
    folder, cfg = _index(tmp_path, dataset, checkpoint, ["all"], kind="flat")
    eval_set = load_eval_set(cfg, "test")
    loaded = load_model(checkpoint)
    images, texts = encode_eval_set(loaded, eval_set)
    # depth 10 < the 132 indexed images: taking the top 10 of the whole index, then dropping other splits'
    # items, would lose most correct images; searching only the split's ids keeps every rank ≤ 10 exact.
    report = evaluate_through_index(folder, images, texts, eval_set, loaded.fingerprint, depth=10)
    plain = evaluate_embeddings(images, texts, eval_set)
    for row in ("index exact", "index (flat)"):
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
            assert abs(report["rows"][row][key] - plain[key]) <= 100 / 24 + 1e-9, (row, key)
    assert plain["t2i_r10"] >= 50  # most correct images are within 10 of 12, few within 10 of all 132


def test_an_index_of_another_split_is_refused(make_karpathy, checkpoint, tmp_path):
    dataset = make_karpathy({"train": 4, "test": 3}, captions=2)
    folder, cfg = _index(tmp_path, dataset, checkpoint, ["train"], kind="flat")
    eval_set = load_eval_set(cfg, "test")
    loaded = load_model(checkpoint)
    with pytest.raises(UserError, match="holds 0 of the 3 images"):
        evaluate_through_index(folder, *encode_eval_set(loaded, eval_set), eval_set, loaded.fingerprint)


def test_eval_command_with_index(make_karpathy, checkpoint, tmp_path, capsys):
    dataset = make_karpathy({"test": 5}, captions=2)
    folder, _ = _index(tmp_path, dataset, checkpoint, ["test"], kind="flat")
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(dataset.data), "--images", str(dataset.images),
            "--workers", "0", "--index", str(folder), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "index (flat)" in out and "index exact" in out and "index recall@10 against exact search" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["index"]["ann_vs_exact_recall_at_10"] == {"image": 1.0, "text": 1.0}
    assert report["results"]["index (flat)"]["t2i_r1"] == report["results"]["index exact"]["t2i_r1"]
