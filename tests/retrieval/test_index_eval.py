"""`retrieval eval --index`: recall through the ANN index beside exact recall over the same vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from index_testing import make_embedded

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.cli import main
from retrieval.config import defaults, load_config
from retrieval.data.evalset import EvalSet
from retrieval.embed import embed_source, from_dataset, read_embeddings
from retrieval.errors import UserError
from retrieval.evaluate import encode_eval_set, evaluate_embeddings, load_eval_set
from retrieval.index import build_index
from retrieval.index.evaluate import evaluate_through_index
from retrieval.index.index_dir import IndexDir
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
    assert "text → image: image index flat (exhaustive), split 5 of 5 items" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["index"]["search"]["text"]["kind"] == "flat"
    assert report["index"]["ann_vs_exact_recall_at_10"] == {"image": 1.0, "text": 1.0}
    assert report["results"]["index (flat)"]["t2i_r1"] == report["results"]["index exact"]["t2i_r1"]


def _weak_index(tmp_path, kind: str, n_images: int):
    """An index of random-ish vectors searched with the cheapest setting (efSearch 16 on a sparse graph; one
    IVF list): its answers visibly differ from exact search."""
    embedded = make_embedded(tmp_path / "emb", n_images, 2 * n_images, dim=32, seed=3)
    folder = tmp_path / f"idx-{kind}"
    build_index(folder, embedded, kind=kind, target_recall=0.01, params={"M": 4, "efConstruction": 8, "nlist": 64})
    return folder, embedded


def _eval_set(embedded, n_images: int) -> EvalSet:
    """The first `n_images` images of `embedded` with their captions, as an eval split."""
    owner = np.array([t.image for t in embedded.texts])
    keep = np.flatnonzero(owner < n_images)
    return EvalSet([Path(e.uri) for e in embedded.images[:n_images]], [embedded.texts[j].text for j in keep],
                   owner[keep], [""] * n_images, "test")


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_the_index_row_is_what_the_service_answers_not_exact_search(tmp_path, kind):
    folder, embedded = _weak_index(tmp_path, kind, 1500)
    eval_set = _eval_set(embedded, 1500)  # the index holds exactly the split
    images, texts = embedded.image_vectors, embedded.text_vectors
    report = evaluate_through_index(folder, images, texts, eval_set, embedded.fingerprint)
    ann, exact = report["rows"][f"index ({kind})"], report["rows"]["index exact"]
    served = IndexDir(folder)
    try:
        by_uri = {uri: row for row, uri in enumerate(str(p) for p in eval_set.images)}
        hits = served.search("image", texts, 10)
        rows = [[by_uri[h.item.uri] for h in found] for found in hits]
        params = served.collections["image"].search_params
    finally:
        served.close()
    for k in (1, 5, 10):
        expected = 100 * np.mean([owner in r[:k] for owner, r in zip(eval_set.text_to_image, rows, strict=True)])
        assert abs(ann[f"t2i_r{k}"] - expected) <= 100 / len(texts) + 1e-9, k  # at most one equal-score swap
    assert ann["t2i_r10"] < exact["t2i_r10"] - 2 and ann["i2t_r10"] < exact["i2t_r10"] - 2, (ann, exact)
    assert report["search"]["image"] == {"kind": kind, "search_params": params, "items": 1500, "split_items": 1500,
                                         "restriction": "none (the index holds the split)"}


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_a_split_of_a_larger_index_is_searched_through_the_ann_with_a_selector(tmp_path, kind):
    folder, embedded = _weak_index(tmp_path, kind, 3000)
    eval_set = _eval_set(embedded, 1000)  # a third of the index: small enough for the service's exhaustive path
    owner = eval_set.text_to_image
    report = evaluate_through_index(folder, embedded.image_vectors[:1000],
                                    embedded.text_vectors[np.flatnonzero(np.array([t.image for t in embedded.texts]) < 1000)],
                                    eval_set, embedded.fingerprint)
    ann, exact = report["rows"][f"index ({kind})"], report["rows"]["index exact"]
    # The budget widened ×3 makes the ANN nearly exact, but not quite; the exhaustive path would be exact.
    assert len(owner) == 2000 and ann["rsum"] < exact["rsum"] - 2, (ann, exact)
    assert report["search"]["text"]["split_items"] == 2000 and report["search"]["text"]["items"] == 6000
    assert report["search"]["image"]["restriction"] == "ID selector, widened budget"
