"""`retrieval export`: merged open_clip folders and ONNX towers embed like the checkpoint they came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.checkpoint import load_model, save_checkpoint
from retrieval.cli import main as cli_main
from retrieval.config import load_config
from retrieval.encode import encode_images, encode_texts
from retrieval.errors import UserError
from retrieval.export import MANIFEST, ExportCheckError, OnnxModel, load_source, write_onnx_dir
from retrieval.model import build_towers

TINY = [
    "model.embed_dim=32",
    "model.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}",
    "model.text_cfg={context_length: 16, vocab_size: 49408, width: 64, heads: 2, layers: 2}",
]
TEXTS = ["a red circle", "a blue square left of a green triangle", "two small yellow stars", "x",
         "a very long caption " + "with many words " * 10]


def _images() -> list[Image.Image]:
    """Real drawings (shapes of several colours), not the noise images the export check uses."""
    images = []
    for i, colour in enumerate(["red", "blue", "green", "yellow", "purple"]):
        img = Image.new("RGB", (48 + 8 * i, 40), "white")
        ImageDraw.Draw(img).ellipse((4 + i, 4, 30 + i, 30), fill=colour)
        images.append(img)
    return images


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose ENN factors moved away from their SVD start (Q, P no longer orthonormal), as after training."""
    config = load_config(None, TINY)
    towers = build_towers(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in towers.model.named_parameters():
            if "parametrizations" in name:
                param.add_(0.02 * torch.randn(param.shape, generator=generator))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, towers, config)
    return path


@pytest.fixture(scope="module")
def expected(checkpoint: Path) -> dict[str, np.ndarray]:
    """Embeddings of the test images/texts by the checkpoint itself (ENN form), through the shared encoders."""
    loaded = load_model(checkpoint, device="cpu")
    return {"image": encode_images(loaded, _images()), "text": encode_texts(loaded, TEXTS), "fp": loaded.fingerprint}


def test_open_clip_folder_loads_with_open_clip_and_matches(checkpoint, expected, tmp_path):
    out = tmp_path / "oc"
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--format", "open_clip", "--out", str(out)]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    assert not any("parametrizations" in key for key in model.state_dict())  # plain open_clip weights
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(img) for img in _images()])).numpy()
        texts = model.encode_text(tokenizer(TEXTS)).numpy()
    assert _cosines(images, expected["image"]).min() >= 0.9999
    assert _cosines(texts, expected["text"]).min() >= 0.9999
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["fingerprint"] == expected["fp"] and manifest["format"] == "open_clip"


def test_onnx_towers_match_with_dynamic_batch(checkpoint, expected, tmp_path):
    out = tmp_path / "onnx"
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    for name in ("image.onnx", "text.onnx"):
        graph = onnx.load(str(out / name))
        onnx.checker.check_model(graph)
        assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    runtime = OnnxModel.load(out)
    assert runtime.fingerprint == expected["fp"]
    for batch_size in (1, 5):
        assert _cosines(runtime.encode_images(_images(), batch_size=batch_size), expected["image"]).min() >= 0.9999
        assert _cosines(runtime.encode_texts(TEXTS, batch_size=batch_size), expected["text"]).min() >= 0.9999
    norms = np.linalg.norm(runtime.encode_texts(TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # documented: outputs are L2-normalised


def test_onnx_export_fails_loudly_when_the_export_is_wrong(checkpoint, tmp_path):
    source = load_source(checkpoint)
    with torch.no_grad():  # a broken merge: the exported weights no longer compute the checkpoint's model
        source.merged.model.visual.proj.mul_(-1.0).add_(0.3)
    out = tmp_path / "bad"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"format": "onnx"}))  # left by an earlier, good export
    with pytest.raises(ExportCheckError, match="image.onnx"):
        write_onnx_dir(source, out)
    with pytest.raises(UserError, match="retrieval_export.json"):  # a failed export is never loadable
        OnnxModel.load(out)


def test_bad_arguments_are_one_line_errors(checkpoint, tmp_path, capsys):
    assert cli_main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    args = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "o"), "--opset", "13"]
    assert cli_main(args) == 2
    assert "opset" in capsys.readouterr().err
