"""Recall@K and ranks for image↔text retrieval (the Flickr30k/COCO protocol), exact and memory-bounded.

Protocol (as VSE++ and CLIP_benchmark): each caption is a text→image query with exactly one correct
image; each image is an image→text query whose correct answers are all of its captions, and it is a hit
at K when *any* of them is in the top K. Rank = 1-based position of the best-placed correct item.

Ties (scores within TIE_TOLERANCE of the correct one; the tolerance absorbs float32 rounding, ~1e-7
between matmul blocks and a direct dot product) are settled by `ties`:
- "position" (default): a tied item ranks ahead when it comes first in the gallery, as a stable
  descending sort (`argsort(-scores, kind="stable")`) orders them. The reference tools define no tie
  rule of their own: VSE++ ranks with `numpy.argsort(scores)[::-1]`, which reverses an ascending sort and
  so puts the *later* of equal items first wherever numpy's sort keeps them in order, and CLIP_benchmark's
  `torch.topk` leaves equal scores in whatever order the kernel returns. Either fixed order only moves
  exact ties (captions repeated verbatim across images), by tenths of a point, and favours the model no
  more than chance does; what matters is that ties are not all counted as hits. A constant embedding
  thus ranks each query's item at its gallery position (chance level, nowhere near 100 %).
- "pessimistic": every tied wrong item ranks ahead, so ties never help (a lower bound; at most a few
  tenths of a point lower where a dataset repeats captions verbatim).

Memory: the N×M score matrix is never held whole; it is built in row blocks of about BLOCK_ELEMENTS
scores (64 MB, plus one work buffer of the same size) with torch's BLAS, and each block is reduced to
counts at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TIE_TOLERANCE = 1e-5
TIE_RULES = ("position", "pessimistic")
BLOCK_ELEMENTS = 1 << 24  # scores per block: 16M float32 = 64 MB

ArrayLike = np.ndarray | torch.Tensor


def retrieval_metrics(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    text_to_image: ArrayLike | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "position",
) -> dict[str, float]:
    """Recall@K (percent) both ways, their sum, and median/mean rank, from L2-normalised embeddings.

    Keys: `i2t_r{k}`, `t2i_r{k}` for each k in `ks`, `rsum` (sum of those recalls), `i2t_medr`,
    `i2t_meanr`, `t2i_medr`, `t2i_meanr`. Inputs: image_emb (N, d), text_emb (M, d), text_to_image (M,).
    `ties`: "position" (gallery order, a stable sort) or "pessimistic" (see the module docstring).
    """
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_to_image, ties)
    return summarize_ranks(i2t, t2i, ks)


def summarize_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K / RSUM / medr / meanr from 1-based ranks (shared with ANN-index evaluation)."""
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        for k in ks:
            out[f"{direction}_r{k}"] = float(100.0 * np.mean(ranks <= k))
    out["rsum"] = float(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks))
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        # floor of the median, as the published tables (integers) and VSE++'s evaluation code report it
        out[f"{direction}_medr"] = float(np.floor(np.median(ranks)))
        out[f"{direction}_meanr"] = float(np.mean(ranks))
    return out


@torch.no_grad()
def retrieval_ranks(
    image_emb: ArrayLike, text_emb: ArrayLike, text_to_image: ArrayLike | Sequence[int], ties: str = "position"
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks: (N,) of each image's best caption among all captions, (M,) of each caption's image."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    images, texts = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    if isinstance(text_to_image, torch.Tensor):
        owner = text_to_image.detach().long()
    else:
        owner = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long)
    n, m = images.shape[0], texts.shape[0]
    _check(images, texts, owner)
    owner = owner.to(images.device)
    device = images.device

    # Score of each caption with its own image, in float64 (the reference for ties), a block at a time.
    correct = torch.empty(m, dtype=torch.float64, device=device)  # (M,)
    for lo in range(0, m, 8192):
        part = slice(lo, lo + 8192)
        correct[part] = (texts[part].double() * images[owner[part]].double()).sum(1)
    best = torch.full((n,), -torch.inf, dtype=torch.float64, device=device)
    best.scatter_reduce_(0, owner, correct, reduce="amax")  # (N,) best correct score per image
    t2i_low, t2i_high = (correct - TIE_TOLERANCE).float(), (correct + TIE_TOLERANCE).float()  # (M,)
    i2t_low, i2t_high = (best - TIE_TOLERANCE).float(), (best + TIE_TOLERANCE).float()  # (N,)

    # Each image's captions as a padded (N, C) index table, to read its correct scores out of a block.
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    slot = torch.arange(width, device=device)
    valid = slot[None, :] < counts[:, None]  # (N, C)
    own_caps = order[(starts[:, None] + slot[None, :]).clamp(max=m - 1)]  # (N, C)
    caption_index = torch.arange(m, device=device)

    i2t_wrong = torch.zeros(n, dtype=torch.long, device=device)
    t2i_wrong = torch.zeros(m, dtype=torch.long, device=device)
    rows = min(n, max(1, BLOCK_ELEMENTS // m))
    block = torch.empty((rows, m), dtype=torch.float32, device=device)
    work = torch.empty_like(block)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        scores = torch.matmul(images[lo:hi], texts.T, out=block[: hi - lo])  # (B, M)
        own_scores = scores.gather(1, own_caps[lo:hi])  # (B, C)
        if ties == "pessimistic":
            # "score ≥ threshold" as 1.0/0.0 floats: (s − t ≥ 0) ⟺ (s ≥ t) exactly in IEEE arithmetic, and
            # float sums vectorise far better than bool ones (4× faster here); counts stay exact below 2^24.
            ahead = torch.sub(scores, i2t_low[lo:hi, None], out=work[: hi - lo]).ge_(0)
            own = (own_scores >= i2t_low[lo:hi, None]) & valid[lo:hi]
            i2t_wrong[lo:hi] = ahead.sum(1).long() - own.sum(1)  # minus the image's own captions
            ahead = torch.sub(scores, t2i_low[None, :], out=work[: hi - lo]).ge_(0)
            t2i_wrong += ahead.sum(0).long()
            mine = order[starts[lo] : starts[hi - 1] + counts[hi - 1]]  # captions of images lo..hi-1
            t2i_wrong[mine] -= (scores[owner[mine] - lo, mine] >= t2i_low[mine]).long()
            continue
        # "position": wrong items clearly above, plus tied ones earlier in the gallery. Correct items are
        # never counted: none is clearly above its own score, and none tied comes before the first one.
        first_tied = torch.where((own_scores >= i2t_low[lo:hi, None]) & valid[lo:hi], own_caps[lo:hi], m)
        first_tied = first_tied.min(1).values  # (B,) gallery index of the first best-scoring own caption
        ahead = torch.sub(scores, i2t_high[lo:hi, None], out=work[: hi - lo]).gt_(0)
        tied = (scores >= i2t_low[lo:hi, None]) & (scores <= i2t_high[lo:hi, None])
        tied &= caption_index[None, :] < first_tied[:, None]
        i2t_wrong[lo:hi] = ahead.sum(1).long() + tied.sum(1)
        ahead = torch.sub(scores, t2i_high[None, :], out=work[: hi - lo]).gt_(0)
        image_index = torch.arange(lo, hi, device=device)
        tied = (scores >= t2i_low[None, :]) & (scores <= t2i_high[None, :]) & (image_index[:, None] < owner[None, :])
        t2i_wrong += ahead.sum(0).long() + tied.sum(0)
    return (i2t_wrong + 1).cpu().numpy(), (t2i_wrong + 1).cpu().numpy()


def _as_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """A float32 (rows, d) tensor; numpy input is shared, not copied, when already float32."""
    tensor = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(tensor.shape)}")
    return tensor.float()


def _check(images: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor) -> None:
    """Shapes agree and every image has at least one caption (else its image→text rank is undefined)."""
    n, m = images.shape[0], texts.shape[0]
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding dims differ: images {images.shape[1]}, texts {texts.shape[1]}")
    if n == 0 or m == 0:
        raise ValueError("need at least one image and one caption")
    if owner.shape != (m,):
        raise ValueError(f"text_to_image must have one entry per caption ({m}), got shape {tuple(owner.shape)}")
    if int(owner.min()) < 0 or int(owner.max()) >= n:
        raise ValueError(f"text_to_image values must lie in [0, {n})")
    if bool((torch.bincount(owner, minlength=n) == 0).any()):
        raise ValueError("every image needs at least one caption in text_to_image")
