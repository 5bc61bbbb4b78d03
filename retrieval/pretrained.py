"""Where a model's architecture and starting weights come from, as open_clip users write it.

`model.name` is an open_clip model config name (`ViT-B-16`); `model.pretrained` is one of: an open_clip
pretrained tag of that name (`laion2b_s34b_b88k`, `openai`), `hf-hub:ORG/NAME` (a Hub repo with
`open_clip_config.json` + weights), `local-dir:FOLDER` (the same layout on disk) or a checkpoint file.
Everything is looked up in open_clip's own registries and fetched by its own downloaders, which read the
Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`): online they download, offline (`HF_HUB_OFFLINE=1`) they
only read the cache. Mistakes fail in one line naming the closest valid names, before any download.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import open_clip
import torch
from open_clip import pretrained as oc_pretrained
from open_clip.factory import _find_checkpoint_in_dir, load_state_dict

from retrieval.errors import UserError

log = logging.getLogger(__name__)

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"


@dataclass(frozen=True)
class Source:
    """A resolved `model.pretrained`: kind is none | file | tag | hf-hub | local-dir; name is `model.name`."""

    kind: str
    value: str  # the file, the tag, the Hub repo id or the folder
    name: str | None

    @property
    def tag_cfg(self) -> dict[str, Any]:
        """open_clip's pretrained config of a tag (hf_hub repo, mean/std, quick_gelu, ...); {} otherwise."""
        return oc_pretrained.get_pretrained_cfg(self.name, self.value) if self.kind == "tag" else {}

    def describe(self) -> str:
        """How a log line or error names this source."""
        if self.kind == "tag":
            return f"{self.name} pretrained tag {self.value!r}"
        return {"hf-hub": HF_HUB, "local-dir": LOCAL_DIR}.get(self.kind, "") + self.value


def closest(word: str, choices: Iterable[str], n: int = 5) -> str:
    """The valid names nearest to `word` (case-insensitive), for an error message."""
    by_lower = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.5)
    return ", ".join(by_lower[m] for m in matches) or "none close"


def model_name(section: dict[str, Any]) -> str | None:
    """`model.name` as open_clip spells it (`ViT-B/16` → `ViT-B-16`), checked against its model configs."""
    name = section.get("name")
    if not name:
        return None
    name = str(name)
    if name.startswith((HF_HUB, LOCAL_DIR)):
        raise UserError(f"model.name: {name!r} is a weights source: write it as model.pretrained ({name}); "
                        "model.name is an open_clip config name such as ViT-B-16")
    cleaned = name.replace("/", "-")  # as open_clip.create_model
    if cleaned not in open_clip.list_models():
        raise UserError(f"model.name: unknown open_clip model {name!r}; closest: {closest(cleaned, open_clip.list_models())}")
    return cleaned


def pretrained_source(section: dict[str, Any]) -> Source:
    """Classify `model.pretrained` as open_clip does (a tag of `model.name` first, then a file); no download."""
    name = model_name(section)
    value = section.get("pretrained")
    if not value:
        return Source("none", "", name)
    value = str(value)
    for prefix, kind in ((LOCAL_DIR, "local-dir"), (HF_HUB, "hf-hub")):
        if value.startswith(prefix):
            rest = value.removeprefix(prefix)
            if not rest:
                raise UserError(f"model.pretrained: nothing after {prefix!r}")
            if kind == "local-dir" and not (Path(rest) / "open_clip_config.json").is_file():
                raise UserError(f"model.pretrained: {rest}/open_clip_config.json not found")
            return Source(kind, rest, name)
    if name and oc_pretrained.is_pretrained_cfg(name, value):
        return Source("tag", value, name)
    if Path(value).is_file():
        return Source("file", value, name)
    owners = oc_pretrained.list_pretrained_models_by_tag(value)
    if not name:
        if owners:
            raise UserError(f"model.pretrained: {value!r} is an open_clip pretrained tag; set model.name to its "
                            f"model ({', '.join(owners[:8])})")
        raise UserError(f"model.pretrained: checkpoint file not found: {value}")
    tags = oc_pretrained.list_pretrained_tags_by_model(name)
    message = f"model.pretrained: {value!r} is neither a pretrained tag of {name} nor a file; "
    message += f"closest tags: {closest(value, tags)}" if tags else f"open_clip has no pretrained tags for {name}"
    if owners:
        message += f" ({value!r} is a tag of {', '.join(owners[:8])})"
    raise UserError(message)


def check_model_section(section: dict[str, Any]) -> None:
    """The `model.name` / `model.pretrained` checks that need no download (run when a config is loaded)."""
    pretrained_source(section)


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn a failed Hub download / cache look-up (an OSError from huggingface_hub, open_clip or
    transformers) into one line naming `what` and the cache folder."""
    try:
        yield
    except OSError as err:
        cache = huggingface_hub.constants.HF_HUB_CACHE
        if huggingface_hub.constants.is_offline_mode():
            why = "HF_HUB_OFFLINE=1 forbids downloading it"
        else:
            reason = (str(err).splitlines() or [""])[0][:200]
            why = f"downloading it failed ({type(err).__name__}: {reason})"
        raise UserError(f"{what} is not in the Hugging Face cache {cache}, and {why}; run once with network "
                        "access, or point HF_HOME / HF_HUB_CACHE at a cache that holds it") from None


def _source_json(source: Source) -> dict[str, Any]:
    """The `open_clip_config.json` ({model_cfg, preprocess_cfg}) of an hf-hub: or local-dir: source."""
    if source.kind == "local-dir":
        return json.loads((Path(source.value) / "open_clip_config.json").read_text())
    with hub_errors(f"model.pretrained: {source.describe()} (open_clip_config.json)"):
        path = oc_pretrained.download_pretrained_from_hf(source.value, filename="open_clip_config.json")
    return json.loads(Path(path).read_text())


def base_config(source: Source) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the open_clip model config that the `model:` keys override, or None when they are the whole config;
    the preprocessing the weights were trained with: mean, std, interpolation, resize_mode)."""
    preprocess = source.tag_cfg
    base = open_clip.get_model_config(source.name) if source.name else None
    if source.kind in ("hf-hub", "local-dir"):
        saved = _source_json(source)
        preprocess = saved.get("preprocess_cfg", {})
        if base is None:
            base = saved.get("model_cfg", saved)
    return base, preprocess


def fetch_weights(source: Source) -> str | None:
    """Path of the full CLIP checkpoint to start from (downloaded by open_clip, or from its cache); None if none."""
    if source.kind == "tag":
        repo = source.tag_cfg.get("hf_hub", "").rstrip("/")
        with hub_errors(f"model.pretrained: {source.describe()} (Hugging Face {repo})"):
            return oc_pretrained.download_pretrained(source.tag_cfg)
    if source.kind == "hf-hub":
        with hub_errors(f"model.pretrained: {source.describe()}"):
            return oc_pretrained.download_pretrained_from_hf(source.value)
    if source.kind == "local-dir":
        path = _find_checkpoint_in_dir(Path(source.value))  # open_clip's own choice of file in the folder
        if path is None:
            raise UserError(f"model.pretrained: no weights (*.safetensors, *.bin, *.pth) in {source.value}")
        return path
    return source.value or None


def load_weights(model: torch.nn.Module, path: str, source: Source) -> None:
    """open_clip's `load_checkpoint` (strict, with its format conversions); a misfit names configs that fit."""
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception:  # torch and open_clip raise many types for a foreign or misfitting file
        raise UserError(misfit_message(model, path, source)) from None
    log.info("starting from %s", source.describe())


def misfit_message(model: torch.nn.Module, path: str, source: Source) -> str:
    """One line: which tensors differ from the configured model, and the open_clip configs the file fits."""
    try:
        theirs = {k: tuple(v.shape) for k, v in load_state_dict(path).items() if isinstance(v, torch.Tensor)}
    except Exception as err:  # not a torch / safetensors file at all
        return f"model.pretrained: {path} is not a readable checkpoint ({type(err).__name__})"
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    where = source.name or "the configured model"
    line = f"model.pretrained: {path} does not fit {where}"
    if differ:
        key = differ[0]
        line += (f" ({len(differ)} tensors differ, e.g. {key}: file {theirs.get(key, 'missing')}, "
                 f"model {ours.get(key, 'missing')})")
    ranked = rank_configs(theirs)
    if ranked and ranked[0][1] == 1.0:
        return line + "; open_clip configs it fits: " + ", ".join(n for n, s in ranked if s == 1.0)
    if ranked:
        return line + "; closest open_clip configs: " + ", ".join(f"{n} ({s:.0%} of tensors fit)" for n, s in ranked[:3])
    return line + "; no open_clip config has its embedding size"


def rank_configs(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, float]]:
    """open_clip model configs by the share of a state dict's (key, shape) pairs they reproduce, best first.

    Only configs with the file's embedding size are built (on the meta device: no memory, ~0.1 s each), and
    only those open_clip builds without a download (no Hugging Face text tower).
    """
    from retrieval.model import create_open_clip  # the one model constructor; model.py imports this module

    embed = next((s[-1] for k, s in shapes.items() if k.endswith(("text_projection", "visual.proj")) and len(s) == 2),
                 None)
    if embed is None:
        return []
    ranked = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        if cfg.get("embed_dim") != embed or "hf_model_name" in cfg["text_cfg"] or "multimodal_cfg" in cfg:
            continue
        try:
            with torch.device("meta"):
                built = create_open_clip(cfg, pretrained_towers=False)
        except Exception:  # a config this installation cannot build (e.g. a timm model it lacks)
            continue
        ours = {k: tuple(v.shape) for k, v in built.state_dict().items()}
        ranked.append((name, sum(ours.get(k) == s for k, s in shapes.items()) / len(ours.keys() | shapes.keys())))
    return sorted(ranked, key=lambda item: -item[1])
