"""bench/enn_vs_plain.py: --plain-steps adds a plain run of N steps, and every ENN variant is compared, seed by
seed, both with plain at equal steps and with that equal-time baseline."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    module = importlib.import_module("enn_vs_plain")
    monkeypatch.setattr(module, "VARIANTS", dict(module.VARIANTS))  # parse_args adds variants to it
    return module


def _run(variant: str, seed: int, rsum: float) -> dict:
    test = {key: 0.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
    return {"variant": variant, "seed": seed, "test": {**test, "rsum": rsum}, "train_wall_s": 1.0,
            "final_orthogonality_error": 0.0}


def test_plain_steps_adds_a_total_steps_variant_and_a_second_baseline(bench, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["enn_vs_plain.py", "--variants", "enn-penalty", "plain", "--plain-steps", "694"])
    args = bench.parse_args()
    assert args.variants == ["enn-penalty", "plain", "plain-694steps"]
    assert args.baselines == ["plain", "plain-694steps"]
    assert bench.VARIANTS["plain-694steps"] == ["enn.enabled=false", "training.total_steps=694"]


def test_enn_is_compared_with_each_baseline_over_the_seeds_both_have(bench):
    runs = [_run("enn-penalty", s, rsum) for s, rsum in enumerate((300, 302, 307))]
    runs += [_run("plain", s, rsum) for s, rsum in enumerate((290, 291, 292))]
    runs += [_run("plain-694steps", s, rsum) for s, rsum in enumerate((305, 306))]  # seed 2 not run yet
    table = bench.summarise(runs, ["enn-penalty", "plain", "plain-694steps"], ["plain", "plain-694steps"])
    assert table["enn-penalty"]["rsum_minus_plain"]["mean"] == pytest.approx(12.0)
    assert table["enn-penalty"]["rsum_minus_plain-694steps"]["mean"] == pytest.approx(-4.5)  # seeds 0, 1
    assert not any(key.startswith("rsum_minus") for key in (*table["plain"], *table["plain-694steps"]))


def test_vs_compares_every_other_variant_with_enn_backprop_too(bench, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["enn_vs_plain.py", "--variants", "enn-penalty", "enn-penalty-lazy4",
                                      "local-per-stage", "plain", "--vs", "enn-penalty"])
    args = bench.parse_args()
    assert args.baselines == ["plain", "enn-penalty"]
    runs = [_run("enn-penalty", s, rsum) for s, rsum in enumerate((300, 302, 307))]
    runs += [_run("enn-penalty-lazy4", s, rsum) for s, rsum in enumerate((299, 303, 305))]
    runs += [_run("local-per-stage", s, rsum) for s, rsum in enumerate((280, 281, 285))]
    runs += [_run("plain", s, rsum) for s, rsum in enumerate((290, 291, 292))]
    table = bench.summarise(runs, args.variants, args.baselines)
    assert table["enn-penalty-lazy4"]["rsum_minus_enn-penalty"]["mean"] == pytest.approx(-2 / 3)
    assert table["local-per-stage"]["rsum_minus_enn-penalty"]["mean"] == pytest.approx(-21.0)
    assert table["enn-penalty"]["rsum_minus_plain"]["mean"] == pytest.approx(12.0)
    assert "rsum_minus_enn-penalty" not in table["enn-penalty"]  # never with itself
    assert table["plain"]["rsum_minus_enn-penalty"]["mean"] == pytest.approx(-12.0)
