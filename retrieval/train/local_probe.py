"""Per-stage recall of an ENN-ℓ checkpoint: how well each unit's local head already retrieves.

Where the final recall falls short of backprop's, this shows at which depth the information is lost:
unit k's (image, text) pair goes through its own local head (the one its loss trained), the last unit's
through the model's real embeddings, and each is scored with the same Recall@K as `retrieval eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.checkpoint import read_checkpoint, towers_from_checkpoint
from retrieval.data.evalset import image_loader
from retrieval.errors import UserError
from retrieval.evaluate import load_eval_set
from retrieval.metrics import retrieval_metrics
from retrieval.train.local_units import build_units, local_heads


@torch.no_grad()
def stage_recall(checkpoint: str | Path, split: str = "test", batch_size: int = 250) -> list[dict[str, float]]:
    """Recall@K (`retrieval_metrics`) of every unit of a `training.method: local` checkpoint on `split`
    of the data set it was trained with, first unit first (the last entry is the model's own recall).

    Every caption is paired with its image (images are encoded once per caption: a unit reads both towers
    together), on CPU, with the units in eval mode. Raises UserError for a backprop checkpoint.
    """
    payload = read_checkpoint(checkpoint)
    towers, cfg = towers_from_checkpoint(payload)
    if cfg["training"]["method"] != "local":
        raise UserError(f"{checkpoint}: a {cfg['training']['method']} run has no local heads to score")
    units = build_units(cfg, towers.model, torch.device("cpu"), total_steps=1)
    local_heads(units).load_state_dict(payload["extra_state"]["local_heads"])
    for unit in units:
        unit.eval()
    eval_set = load_eval_set(cfg["data"], split)
    pixels = torch.cat(list(image_loader(eval_set.images, towers.preprocess_val, batch_size, 0, eval_set.sources)))
    tokens = towers.tokenizer(eval_set.captions)
    owner = torch.as_tensor(eval_set.text_to_image)
    first_caption = np.unique(eval_set.text_to_image, return_index=True)[1]
    images: list[list[torch.Tensor]] = [[] for _ in units]
    texts: list[list[torch.Tensor]] = [[] for _ in units]
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size]
        micro = (pixels[owner[start:start + batch_size]], ids, ids)
        for k, unit in enumerate(units):
            image, text, image_feature, text_feature = unit.features(micro)
            images[k].append(image_feature.float())
            texts[k].append(text_feature.float())
            micro = (image, text, ids)
    return [_scores(torch.cat(i)[first_caption], torch.cat(t), eval_set.text_to_image) for i, t in zip(images, texts, strict=True)]


def _scores(images: torch.Tensor, texts: torch.Tensor, owner: np.ndarray) -> dict[str, Any]:
    return {key: float(value) for key, value in retrieval_metrics(images.numpy(), texts.numpy(), owner).items()}
