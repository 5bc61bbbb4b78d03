"""The model an export starts from: a checkpoint's towers merged to plain weights, and the ENN original.

Exports are plain open_clip models (`enn.merge`), so any open_clip / ONNX consumer runs them without our
code. The ENN-form model is kept beside the merged one so that every export is checked against what the
checkpoint really computes, not against the merged copy it was made from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import enn
from retrieval.checkpoint import read_checkpoint, towers_from_checkpoint
from retrieval.model import Towers

MANIFEST = "retrieval_export.json"


@dataclass
class ExportSource:
    """A checkpoint ready to export: merged towers (plain weights) and the ENN reference model."""

    merged: Towers
    reference: torch.nn.Module
    config: dict[str, Any]
    fingerprint: str
    checkpoint: Path

    @property
    def embed_dim(self) -> int:
        return int(self.merged.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.merged.model_cfg["text_cfg"].get("context_length", 77))

    @property
    def hf_text(self) -> bool:
        return bool(self.merged.model_cfg["text_cfg"].get("hf_model_name"))


def load_source(checkpoint: str | Path) -> ExportSource:
    """Read a checkpoint (or run directory) on CPU: one copy merged for export, one kept in ENN form."""
    payload = read_checkpoint(checkpoint)
    merged, config = towers_from_checkpoint(payload)
    reference, _ = towers_from_checkpoint(payload)
    enn.merge(merged.model)
    merged.model.eval()
    reference.model.eval()
    return ExportSource(
        merged=merged,
        reference=reference.model,
        config=config,
        fingerprint=str(payload.get("fingerprint", "")),
        checkpoint=Path(checkpoint),
    )


def prepare_out(out: Path) -> None:
    """Create `out`; drop an earlier export's manifest, so a folder whose new export fails its check is
    never taken for a checked one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)


def save_tokenizer_files(source: ExportSource, out: Path) -> None:
    """For a Hugging Face text tower, put its tokenizer and config in `out` so the folder stands alone."""
    if not source.hf_text:
        return  # open_clip's SimpleTokenizer ships its BPE vocabulary inside the package
    hf_tokenizer = getattr(source.merged.tokenizer, "tokenizer", None)
    if hf_tokenizer is None:
        raise RuntimeError("HF text tower without a transformers tokenizer; cannot export its vocabulary")
    hf_tokenizer.save_pretrained(str(out))
    source.merged.model.text.config.save_pretrained(str(out))


def self_contained_model_cfg(source: ExportSource, out: Path) -> dict[str, Any]:
    """The model config with an HF text tower pointed at `out` (which holds its config and tokenizer)."""
    model_cfg = json.loads(json.dumps(source.merged.model_cfg))
    if source.hf_text:
        # open_clip reads the HF architecture config from hf_model_name even when it loads our weights,
        # and the tokenizer from the local-dir itself; pointing both at the export folder drops any
        # dependency on the training machine's HF folder. (The path is absolute: move the folder → edit it.)
        model_cfg["text_cfg"]["hf_model_name"] = str(out.resolve())
        model_cfg["text_cfg"]["hf_tokenizer_name"] = str(out.resolve())
    return model_cfg


def write_manifest(source: ExportSource, out: Path, fmt: str, **details: Any) -> dict[str, Any]:
    """Write `retrieval_export.json`: what was exported, from which model (fingerprint), and its checks."""
    manifest = {
        "format": fmt,
        "fingerprint": source.fingerprint,
        "source_checkpoint": str(source.checkpoint),
        "embed_dim": source.embed_dim,
        "context_length": source.context_length,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **details,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
