"""bench/demo_recipe.py: every variant it lists resolves to a valid config, and unknown names stop with a list."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from retrieval.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # scripts importing each other by file name
    monkeypatch.chdir(ROOT)
    return importlib.import_module("demo_recipe")


def test_every_variant_and_its_plain_twin_is_a_valid_config(bench):
    names = list(bench.yaml.safe_load(bench.VARIANTS_FILE.read_text())["variants"])
    assert "recipe" in names
    for name in names:
        config, overrides = bench.variant_config(name)
        assert load_config(config, overrides)["enn"]["enabled"] == (not name.endswith("-plain"))
        config, overrides = bench.variant_config(name, plain=True)
        assert not load_config(config, overrides)["enn"]["enabled"]


def test_unknown_variant_names_the_known_ones(bench):
    with pytest.raises(SystemExit, match="unknown variant 'nope'.*vit-baseline"):
        bench.variant_config("nope")
