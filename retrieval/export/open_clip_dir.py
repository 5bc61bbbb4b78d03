"""`--format open_clip`: a folder that `open_clip.create_model_and_transforms("local-dir:DIR")` loads.

Layout (what open_clip 3.x's local-dir loader looks for): `open_clip_config.json` with `model_cfg` and
`preprocess_cfg`, weights in `open_clip_model.safetensors` (its first-choice file name), plus, for a
Hugging Face text tower, the tokenizer and HF config; `retrieval_export.json` records the fingerprint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from retrieval.export.check import SAMPLE_TEXTS, reference_embeddings, require_close, sample_images
from retrieval.export.source import (
    ExportSource,
    prepare_out,
    save_tokenizer_files,
    self_contained_model_cfg,
    write_manifest,
)

log = logging.getLogger(__name__)

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def write_open_clip_dir(source: ExportSource, out: Path) -> dict[str, Any]:
    """Write merged weights + configs into `out`, reload them with open_clip and check the embeddings."""
    prepare_out(out)
    config = {"model_cfg": self_contained_model_cfg(source, out), "preprocess_cfg": source.merged.preprocess_cfg}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    # safetensors refuses tensors that share storage; every weight gets its own contiguous copy.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in source.merged.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"fingerprint": source.fingerprint})
    save_tokenizer_files(source, out)
    check = verify_open_clip_dir(source, out)
    log.info("open_clip folder written to %s", out)
    return write_manifest(source, out, "open_clip", weights=WEIGHTS, check=check)


@torch.no_grad()
def verify_open_clip_dir(source: ExportSource, out: Path) -> dict[str, float]:
    """Load `out` as a user would (open_clip local-dir, its tokenizer and transform) and compare embeddings."""
    name = f"local-dir:{out}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    want = reference_embeddings(source)
    pixels = torch.stack([preprocess(img) for img in sample_images()])
    got_image = F.normalize(model.encode_image(pixels), dim=-1).numpy()
    got_text = F.normalize(model.encode_text(tokenizer(SAMPLE_TEXTS)), dim=-1).numpy()
    return {
        "image_min_cosine": require_close("open_clip image tower", got_image, want["image"]),
        "text_min_cosine": require_close("open_clip text tower", got_text, want["text"]),
    }
