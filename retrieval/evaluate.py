"""Dataset-level evaluation: encode an EvalSet with a model, then Recall@K (validation and `retrieval eval`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from retrieval.data.evalset import EvalSet, fold_indices, image_loader
from retrieval.data.records import scan_records
from retrieval.metrics import retrieval_metrics

if TYPE_CHECKING:
    from retrieval.checkpoint import LoadedModel


def load_eval_set(cfg_data: Mapping[str, Any], split: str) -> EvalSet:
    """The images and captions of `split`; with `skip_bad`, unreadable images are found (decoded) now.

    Without `skip_bad` decoding is left to encoding time, where a bad file stops with its name.
    """
    records, problems = scan_records(cfg_data, split)
    eval_set = EvalSet.from_records(records, name=split)
    if problems.skip:
        eval_set = eval_set.drop_unreadable(problems, workers=int(cfg_data.get("workers", 2)))
        problems.log_summary(f"{cfg_data['path']} ({split})")
    return eval_set


def encode_eval_set(
    loaded: LoadedModel, eval_set: EvalSet, batch_size: int = 256, workers: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) image and (M, D) caption embeddings, L2-normalised float32, in EvalSet order."""
    from retrieval.encode import embed_pixels, encode_texts

    loader = image_loader(eval_set.images, loaded.preprocess, batch_size, workers, eval_set.sources)
    batches = tqdm(loader, desc="images", unit="batch", disable=not progress)
    images = np.concatenate([embed_pixels(loaded, pixels) for pixels in batches])
    texts = encode_texts(loaded, eval_set.captions, batch_size, progress=progress)
    return images, texts


def evaluate_embeddings(
    image_emb: np.ndarray, text_emb: np.ndarray, eval_set: EvalSet, folds: int | None = None,
    ties: str = "position",
) -> dict[str, float]:
    """Recall@K etc. on the whole set, or (`folds=5`, COCO-1K) the mean over consecutive image folds."""
    if folds is None:
        return retrieval_metrics(image_emb, text_emb, eval_set.text_to_image, ties=ties)
    owner = eval_set.text_to_image
    per_fold = []
    for part in fold_indices(eval_set.n_images, folds):
        lo, hi = int(part[0]), int(part[-1]) + 1
        rows = np.flatnonzero((owner >= lo) & (owner < hi))
        per_fold.append(retrieval_metrics(image_emb[lo:hi], text_emb[rows], owner[rows] - lo, ties=ties))
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def evaluate(
    loaded: LoadedModel, eval_set: EvalSet, batch_size: int = 256, workers: int = 0, folds: int | None = None
) -> dict[str, float]:
    """Encode `eval_set` with the model and return `retrieval_metrics` (the trainer's per-epoch validation)."""
    images, texts = encode_eval_set(loaded, eval_set, batch_size, workers)
    return evaluate_embeddings(images, texts, eval_set, folds)


def random_embeddings(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) random unit vectors: the chance-level baseline that `retrieval eval --random-baseline` shows."""
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
