"""The one config loader: YAML run config + `--set key=value` overrides, checked against defaults.yaml."""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from retrieval.errors import UserError
from retrieval.losses import LOSSES


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; users type `1e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader


def defaults() -> dict[str, Any]:
    """Every known key with its default value (a fresh copy)."""
    text = resources.files("retrieval").joinpath("defaults.yaml").read_text()
    return _yaml(text)


def _merge(base: dict, update: Mapping, schema: Mapping, where: str) -> None:
    """Deep-merge `update` into `base`, refusing keys that `schema` does not know."""
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f" (did you mean {(where + '.' if where else '') + close[0]!r}?)" if close else ""
            raise UserError(f"unknown config key {path!r}{hint}")
        known = schema[key]
        if isinstance(known, dict) and known:  # checked sub-section
            if not isinstance(value, Mapping):
                raise UserError(f"config key {path!r} must be a mapping, got {value!r}")
            _merge(base[key], value, known, path)
        elif isinstance(known, dict):  # free-form (open_clip's own cfg dicts)
            if value is not None and not isinstance(value, Mapping):
                raise UserError(f"config key {path!r} must be a mapping, got {value!r}")
            base[key] = copy.deepcopy(dict(value or {}))
        else:
            base[key] = value


def parse_overrides(pairs: Iterable[str]) -> list[tuple[list[str], Any]]:
    """`["training.lr=1e-3", "enn.ortho=exact"]` → `[(["training", "lr"], 0.001), ...]`; values are parsed as
    YAML scalars."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value (e.g. training.lr=1e-3), got {pair!r}")
        parsed.append((key.split("."), _yaml(raw) if raw else None))
    return parsed


def _apply_override(cfg: dict, schema: Mapping, parts: list[str], value: Any) -> None:
    """Set the one key `parts` names. Inside a free-form dict (open_clip's vision_cfg / text_cfg) a dotted key
    sets that key and keeps the others (`model.vision_cfg.layers=8` deepens the configured tower); naming the
    dict itself (`model.vision_cfg={...}`) replaces it."""
    node, known = cfg, schema
    for depth, part in enumerate(parts[:-1]):
        sub = known.get(part)
        if isinstance(sub, dict) and not sub:
            inner = node[part]
            for name in parts[depth + 1 : -1]:
                inner = inner.setdefault(name, {})
                if not isinstance(inner, dict):
                    raise UserError(f"config key {'.'.join(parts)!r}: {name!r} is not a mapping")
            inner[parts[-1]] = value
            return
        if not isinstance(sub, dict):
            break  # unknown or a scalar: _merge below gives the usual message
        node, known = node[part], sub
    update: Any = value
    for part in reversed(parts):
        update = {part: update}
    _merge(cfg, update, schema, "")


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults ← the YAML file (after the files its `base:` chain names) ← the overrides, then validated.
    `path=None` gives the defaults."""
    cfg = defaults()
    schema = defaults()
    written: set[str] = set()
    for layer in _config_files(Path(path)) if path is not None else []:
        _merge(cfg, layer, schema, "")
        written |= set(layer.get("model") or {})
    for parts, value in parse_overrides(overrides):
        _apply_override(cfg, schema, parts, value)
        if parts[0] == "model":
            written |= {parts[1]} if len(parts) > 1 else set(value or {})
    _inherit_architecture(cfg["model"], written)
    validate(cfg)
    if cfg["model"]["name"] or cfg["model"]["pretrained"]:
        from retrieval.pretrained import check_model_section  # imports open_clip: only when needed

        check_model_section(cfg["model"])  # unknown model name or tag: fail now, before any work
    return cfg


def _config_files(path: Path, naming: tuple[Path, ...] = ()) -> list[Mapping[str, Any]]:
    """The mappings a config file stands for, in the order they apply: with `base: OTHER.yaml` (a path relative
    to the file) the base's own chain first, then the file's keys, so that a variant writes only what differs.
    Sections merge key by key; a tower config (`vision_cfg`, `text_cfg`) is one value that a later file replaces
    whole, as it replaces the defaults'."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}" + (f" (the base of {naming[-1]})" if naming else ""))
    try:
        loaded = _yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path}: a config must be a mapping of sections, got {type(loaded).__name__}")
    own = {key: value for key, value in loaded.items() if key != "base"}
    if "base" not in loaded:
        return [own]
    base = loaded["base"]
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: base must name a config file (relative to this one), got {base!r}")
    chain = (*naming, path)
    parent = path.parent / base
    if parent.resolve() in {p.resolve() for p in chain}:
        raise UserError(f"{path}: base {base!r} leads back to {parent} (a loop)")
    return [*_config_files(parent, chain), own]


def _inherit_architecture(model: dict[str, Any], written: set[str]) -> None:
    """With `model.name` or an `hf-hub:` / `local-dir:` start, that source's config is the architecture and only
    the `model:` keys the user wrote override it: defaults.yaml's embed_dim / quick_gelu become null (its
    vision_cfg / text_cfg defaults are empty, i.e. no overrides)."""
    if model["name"] or str(model["pretrained"] or "").startswith(("hf-hub:", "local-dir:")):
        for key in ("embed_dim", "quick_gelu"):
            if key not in written:
                model[key] = None


def from_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored inside a checkpoint, re-checked (it may come from an older version)."""
    cfg = defaults()
    _merge(cfg, raw, defaults(), "")
    validate(cfg)
    return cfg


_CHOICES = {
    ("enn", "ortho"): ("penalty", "exact", "none"),
    ("data", "format"): ("karpathy", "csv"),
    ("data", "captions"): ("random", "all"),
    ("data", "hard_negatives"): ("none", "twins"),
    ("training", "method"): ("bp", "local"),
    ("training", "loss"): LOSSES,
    ("training", "precision"): ("auto", "fp32", "bf16"),
    ("training", "local_head"): ("random", "learned", "mlp", "block", "attnpool", "auglocal"),
    ("training", "local_targets"): ("own", "cross"),
    ("training", "local_losses"): ("per_stage", "per_group"),
    ("training", "local_pool"): ("mean", "final"),
}


def validate(cfg: Mapping[str, Any]) -> None:
    """Cross-key checks that must fail before any work starts."""
    for (section, key), allowed in _CHOICES.items():
        if cfg[section][key] not in allowed:
            raise UserError(f"config key {section}.{key} must be one of {', '.join(allowed)}; got {cfg[section][key]!r}")
    model = cfg["model"]
    for tower in ("vision_cfg", "text_cfg"):
        tower_dim = model[tower].get("embed_dim", model["embed_dim"])
        if model["embed_dim"] is not None and tower_dim != model["embed_dim"]:
            raise UserError(
                f"model.{tower}.embed_dim={tower_dim} disagrees with model.embed_dim={model['embed_dim']}: "
                "both towers must map into the same embedding space"
            )
    train = cfg["training"]
    for key in ("epochs", "batch_size", "accum_steps", "stages", "val_every_epochs"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise UserError(f"config key training.{key} must be a positive integer, got {train[key]!r}")
    total = train["total_steps"]
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
        raise UserError(f"config key training.total_steps must be a positive integer or null, got {total!r}")
    every = cfg["enn"]["penalty_every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UserError(f"config key enn.penalty_every must be a positive integer, got {every!r}")
    if train["batch_size"] % train["accum_steps"]:
        raise UserError("training.batch_size must be divisible by training.accum_steps")
    if train["loss"] == "siglip" and train["method"] == "local":
        raise UserError("training.loss=siglip is for training.method=bp: ENN-ℓ trains every stage on the softmax "
                        "CLIP loss (set training.loss=clip)")


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the fully resolved config (what actually ran) next to the run's outputs."""
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
