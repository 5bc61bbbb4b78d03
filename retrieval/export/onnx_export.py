"""`--format onnx`: one ONNX file per tower, exported from the merged model and checked on export.

`image.onnx`: `pixels` float32 (B, 3, H, W), already preprocessed (resize/crop/normalise as in
`preprocess_cfg`) → `embedding` float32 (B, D), L2-normalised. `text.onnx`: `tokens` int64 (B, L), the
tokenizer's ids padded to the context length → `embedding` (B, D), L2-normalised. The batch dimension is
dynamic. Normalised outputs are what every consumer (cosine search, FAISS inner product) wants.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.export.check import SAMPLE_TEXTS, reference_embeddings, require_close, sample_images
from retrieval.export.onnx_runtime import IMAGE_FILE, IMAGE_INPUT, OUTPUT, TEXT_FILE, TEXT_INPUT, OnnxModel
from retrieval.export.source import (
    ExportSource,
    prepare_out,
    save_tokenizer_files,
    self_contained_model_cfg,
    write_manifest,
)

log = logging.getLogger(__name__)

OPSET = 18


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens), dim=-1)


def _export(tower: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int) -> None:
    # Grad mode on: in no-grad eval mode nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX symbolic.
    with torch.enable_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about open_clip's Python-side shape checks being traced as
        # constants, and about its own deprecation; the on-export ORT check is what guards correctness.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[OUTPUT],
            dynamic_axes={input_name: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            # The TorchScript-based exporter handles open_clip's attention in one pass; the dynamo
            # exporter produced an invalid text graph (duplicate output name) with this torch/onnx pair.
            dynamo=False,
        )


def write_onnx_dir(source: ExportSource, out: Path, opset: int = OPSET) -> dict[str, Any]:
    """Export both towers, then run the sample inputs through ONNX Runtime and require a match."""
    prepare_out(out)
    model = source.merged.model
    images = sample_images()
    # Trace with batch 2, check with 3 and 1: the check also proves the batch dimension is dynamic.
    pixels = torch.stack([source.merged.preprocess_val(img) for img in images[:2]])
    _export(_ImageTower(model), pixels, IMAGE_INPUT, out / IMAGE_FILE, opset)
    _export(_TextTower(model), source.merged.tokenizer(SAMPLE_TEXTS[:2]), TEXT_INPUT, out / TEXT_FILE, opset)
    save_tokenizer_files(source, out)
    model_cfg = self_contained_model_cfg(source, out)
    check = verify_onnx(source, OnnxModel(out, model_cfg, source.merged.preprocess_cfg, source.fingerprint))
    log.info("ONNX towers written to %s", out)
    return write_manifest(
        source,
        out,
        "onnx",
        model_cfg=model_cfg,
        preprocess_cfg=source.merged.preprocess_cfg,
        opset=opset,
        files={"image": IMAGE_FILE, "text": TEXT_FILE},
        inputs={"image": f"{IMAGE_INPUT} float32 (B,3,H,W) preprocessed", "text": f"{TEXT_INPUT} int64 (B,L)"},
        output=f"{OUTPUT} float32 (B,D), L2-normalised",
        check=check,
    )


def verify_onnx(source: ExportSource, runtime: OnnxModel) -> dict[str, float]:
    """Raw images and texts through ONNX Runtime (with its own preprocessing) vs. the PyTorch checkpoint."""
    want = reference_embeddings(source)
    images = sample_images()
    one_by_one = runtime.encode_images(images, batch_size=1)
    require_close("image.onnx (batch 1)", one_by_one, want["image"])
    return {
        "image_min_cosine": require_close("image.onnx", runtime.encode_images(images), want["image"]),
        "text_min_cosine": require_close("text.onnx", runtime.encode_texts(SAMPLE_TEXTS), want["text"]),
    }
