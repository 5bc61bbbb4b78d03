"""Recall@K / ranks: a brute-force reference, hand-computed cases, ties, chance level, memory blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import metrics
from retrieval.metrics import TIE_TOLERANCE, retrieval_metrics, retrieval_ranks, summarize_ranks


def reference_ranks(
    images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ties: str = "position"
) -> tuple[np.ndarray, np.ndarray]:
    """The definition, spelled out with loops over a full float64 score matrix."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T
    n, m = scores.shape

    def ahead(score: float, correct: float, earlier: bool) -> bool:
        if ties == "pessimistic":
            return score >= correct - TIE_TOLERANCE
        return score > correct + TIE_TOLERANCE or (abs(score - correct) <= TIE_TOLERANCE and earlier)

    t2i = []
    for j in range(m):
        correct = scores[owner[j], j]
        t2i.append(1 + sum(ahead(scores[i, j], correct, i < owner[j]) for i in range(n) if i != owner[j]))
    i2t = []
    for i in range(n):
        best = max(scores[i, j] for j in range(m) if owner[j] == i)
        first = min(j for j in range(m) if owner[j] == i and scores[i, j] >= best - TIE_TOLERANCE)
        i2t.append(1 + sum(ahead(scores[i, j], best, j < first) for j in range(m) if owner[j] != i))
    return np.array(i2t), np.array(t2i)


def topk_ranks(images: np.ndarray, texts: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks as a stable ordering finds them: position of the first correct item in a stable
    descending sort of the scores (rounded, so that BLAS rounding does not split equal scores)."""
    scores = np.round(images.astype(np.float64) @ texts.astype(np.float64).T, 6)
    t2i = [1 + int(np.flatnonzero(np.argsort(-scores[:, j], kind="stable") == owner[j])[0]) for j in range(len(owner))]
    i2t = [1 + int(np.flatnonzero(owner[np.argsort(-scores[i], kind="stable")] == i)[0]) for i in range(len(images))]
    return np.array(i2t), np.array(t2i)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_case(rng: np.random.Generator, n: int, dim: int, quantize: bool) -> tuple[np.ndarray, ...]:
    """Random images with 1–5 captions each, captions shuffled; `quantize` draws from a few vectors → ties."""
    per_image = rng.integers(1, 6, size=n)
    owner = rng.permutation(np.repeat(np.arange(n), per_image))
    if quantize:  # every row is one of 4 unit vectors: many exact ties
        palette = unit(rng.standard_normal((4, dim)))
        images, texts = palette[rng.integers(0, 4, n)], palette[rng.integers(0, 4, len(owner))]
    else:  # captions near their image, so ranks spread over the whole range
        images = unit(rng.standard_normal((n, dim)))
        texts = unit(images[owner] + 1.5 * rng.standard_normal((len(owner), dim)))
    return images, texts, owner


@pytest.mark.parametrize("ties", ["position", "pessimistic"])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_reference(seed, quantize, ties, monkeypatch):
    rng = np.random.default_rng(seed)
    images, texts, owner = random_case(rng, n=int(rng.integers(2, 40)), dim=8, quantize=quantize)
    # Small blocks: several row blocks, captions of one image spread over blocks.
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 3 * len(owner))
    i2t, t2i = retrieval_ranks(images, texts, owner, ties=ties)
    ref_i2t, ref_t2i = reference_ranks(images, texts, owner, ties=ties)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)


@pytest.mark.parametrize("seed", range(3))
def test_position_ties_match_a_stable_top_k_as_clip_benchmark_ranks(seed):
    rng = np.random.default_rng(seed)
    images, texts, owner = random_case(rng, n=30, dim=8, quantize=True)  # many exact ties
    ours = retrieval_ranks(images, texts, owner)
    for got, want in zip(ours, topk_ranks(images, texts, owner), strict=True):
        np.testing.assert_array_equal(got, want)


def test_hand_computed_case():
    # images e0, e1, e2; captions 0,1 → image 0, caption 2 → image 1, caption 3 → image 2
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0.8, 0, 0.6]], dtype=np.float32)
    owner = np.array([0, 0, 1, 2])
    # scores (image × caption): [[1, 0, 0, .8], [0, 1, 1, 0], [0, 0, 0, .6]]
    # t2i: caption 1 ties image 2 at 0 and loses to image 1 → rank 3; caption 3 loses to image 0 → rank 2
    # i2t: image 0's best caption (0) is first even though its caption 1 is not; image 1 ties caption 1 → 2
    i2t, t2i = retrieval_ranks(images, texts, owner, ties="pessimistic")
    assert i2t.tolist() == [1, 2, 1]
    assert t2i.tolist() == [1, 3, 1, 2]
    m = retrieval_metrics(images, texts, owner, ties="pessimistic")
    assert m["i2t_r1"] == pytest.approx(200 / 3) and m["t2i_r1"] == 50.0
    assert m["i2t_r5"] == m["t2i_r5"] == m["i2t_r10"] == m["t2i_r10"] == 100.0
    assert m["rsum"] == pytest.approx(200 / 3 + 50 + 400)
    assert (m["i2t_medr"], m["t2i_medr"]) == (1.0, 1.0)  # t2i median 1.5 is floored, as in VSE++
    assert m["i2t_meanr"] == pytest.approx(4 / 3) and m["t2i_meanr"] == pytest.approx(7 / 4)


def test_hand_computed_case_with_ties_by_position():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0.8, 0, 0.6]], dtype=np.float32)
    owner = np.array([0, 0, 1, 2])
    # caption 1 (image 0, score 0) ties image 2 (later: behind) and loses to image 1 → rank 2;
    # image 1's captions 1 (wrong) and 2 (right) tie at 1 and caption 1 comes first → rank 2
    i2t, t2i = retrieval_ranks(images, texts, owner)
    assert i2t.tolist() == [1, 2, 1]
    assert t2i.tolist() == [1, 2, 1, 2]


def test_image_to_text_counts_any_caption():
    # image 0 has one perfect caption and four useless ones: still rank 1 at image→text
    images = np.eye(2, dtype=np.float32)
    texts = np.array([[1, 0]] + [[0, 1]] * 4 + [[0, 1]], dtype=np.float32)
    owner = np.array([0, 0, 0, 0, 0, 1])
    i2t, _ = retrieval_ranks(images, texts, owner)
    assert i2t[0] == 1


def test_constant_embeddings_do_not_score():
    n, per = 50, 5
    images = np.ones((n, 4), np.float32) / 2
    texts = np.ones((n * per, 4), np.float32) / 2
    owner = np.repeat(np.arange(n), per)
    m = retrieval_metrics(images, texts, owner, ties="pessimistic")
    # every wrong item ties with the correct one and ties count against: worst rank, zero recall
    assert m["t2i_r1"] == m["t2i_r10"] == m["i2t_r10"] == 0.0
    assert m["t2i_medr"] == n and m["i2t_medr"] == n * per - per + 1
    # by position each query's item sits at its place in the gallery: chance level, far from 100 %
    m = retrieval_metrics(images, texts, owner)
    assert m["t2i_r1"] == pytest.approx(100 / n) and m["t2i_r10"] == pytest.approx(1000 / n)
    assert m["i2t_r10"] == pytest.approx(100 * 2 / n)  # images 0 and 1 own captions 0-9
    assert m["rsum"] < 100


def test_random_embeddings_are_at_chance_level():
    rng = np.random.default_rng(0)
    n, per, dim = 200, 5, 64
    images, texts = unit(rng.standard_normal((n, dim))), unit(rng.standard_normal((n * per, dim)))
    m = retrieval_metrics(images, texts, np.repeat(np.arange(n), per))
    assert 2.0 < m["t2i_r10"] < 8.0  # chance: 10 / 200 = 5 %
    assert abs(m["t2i_meanr"] - (n + 1) / 2) < 0.1 * n


def test_torch_and_numpy_inputs_agree_and_other_ks_are_named():
    rng = np.random.default_rng(1)
    images, texts, owner = random_case(rng, 30, 16, quantize=False)
    from_numpy = retrieval_metrics(images, texts, owner, ks=(1, 3, 20))
    from_torch = retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), torch.from_numpy(owner), ks=(1, 3, 20))
    assert from_numpy == from_torch
    assert {"i2t_r3", "t2i_r20"} <= from_numpy.keys() and "i2t_r5" not in from_numpy
    assert from_numpy["rsum"] == pytest.approx(sum(from_numpy[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 3, 20)))


def test_summarize_ranks_is_the_recall_definition():
    m = summarize_ranks(np.array([1, 2, 6, 11]), np.array([1, 1, 1, 30]), ks=(1, 5, 10))
    assert (m["i2t_r1"], m["i2t_r5"], m["i2t_r10"]) == (25.0, 50.0, 75.0)
    assert (m["t2i_r1"], m["t2i_r10"], m["t2i_meanr"]) == (75.0, 75.0, 33 / 4)


@pytest.mark.parametrize(
    ("images", "texts", "owner", "message"),
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), [0, 1], "dims differ"),
        (np.zeros((2, 3)), np.zeros((2, 3)), [0, 2], r"lie in \[0, 2\)"),
        (np.zeros((3, 3)), np.zeros((2, 3)), [0, 1], "at least one caption"),
        (np.zeros((2, 3)), np.zeros((3, 3)), [0, 1], "one entry per caption"),
        (np.zeros(3), np.zeros((3, 3)), [0, 1, 2], "2-D"),
    ],
)
def test_bad_inputs_are_refused(images, texts, owner, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(images, texts, np.asarray(owner))
