"""bench/local_vs_bp.py: its variants are valid configs, and the summary picks the best fully seeded one."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from retrieval.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.chdir(ROOT)
    return importlib.import_module("local_vs_bp")


def test_every_recall_variant_is_a_valid_config(bench):
    vit = {"local-block-heads", "local-block-heads-final-readout", "local-final-readout"}
    for name, overrides in bench.RECALL_VARIANTS.items():
        config = "configs/synth-small-vit.yaml" if name in vit else "configs/synth-small.yaml"
        assert load_config(config, overrides)["training"]["method"] == ("bp" if name.startswith("bp") else "local")


def _summary(rsums: list[float], seeds: int) -> dict:
    return {"rsum": (sum(rsums) / len(rsums), 0.0), "seeds": list(range(seeds))}


def test_the_headline_is_the_best_variant_with_three_seeds_against_bp(bench):
    recall = {"bp": _summary([300.0], 3), "local": _summary([240.0], 3), "local-attnpool-heads": _summary([270.0], 3),
              "local-auglocal-heads": _summary([290.0], 1),  # better, but one seed only: not a headline
              "bp-lazy-penalty4": _summary([310.0], 3)}  # a backprop variant: never the best ENN-ℓ variant
    speed = {"overrides": ["training.local_head=attnpool"], "methods": {
        "bp": {"samples_per_s": 100.0, "peak_private_mb": {"main": {"uss_mb": 1000.0}}},
        "local-pipelined": {"samples_per_s": 130.0, "peak_private_mb": {
            "main": {"uss_mb": 900.0}, "stage_proc_0": {"uss_mb": 500.0}, "stage_proc_1": {"uss_mb": 400.0}}}}}
    out = bench.headline({"recall": {"summary": recall}, "speed": speed})
    assert out["best_variant"] == "local-attnpool-heads" and out["seeds"] == [0, 1, 2]
    assert out["rsum_ratio_vs_bp"] == pytest.approx(0.9)
    assert out["throughput_ratio_vs_bp"] == pytest.approx(1.3) and out["uss_ratio_vs_bp"] == pytest.approx(0.5)
    assert bench.headline({"recall": {"summary": {"bp": recall["bp"]}}})["best_variant"] is None


def test_speed_is_compared_with_bp_at_1_thread_bp_at_its_best_and_ddp(bench):
    speed = importlib.import_module("local_speed")  # bench/local_speed.py: the speed and e2e parts
    vs = speed.versus({"bp": 90.0, "bp-1thread": 100.0, "bp-ddp": 120.0, "local-pipelined": 190.0})
    assert vs["local-pipelined"] == pytest.approx({"x_bp_1thread": 1.9, "x_bp_best": 1.9, "x_ddp": 190 / 120})
    assert speed.goal(vs) == {"x_bp_1thread >= 1.8": True, "x_bp_best >= 1.0": True, "x_ddp >= 1.0": True}
    assert speed.versus({"bp": 90.0, "local-pipelined": 100.0})["local-pipelined"] == {"x_bp_best": 100 / 90}
    stats = speed.explained({"stages": [{"work_s": 3.0, "cpu_s": 3.0}, {"work_s": 1.0, "cpu_s": 1.0}],
                             "feeder_cpu_s": 1.0, "feed_blocked_s": 0.5})
    assert stats["stage_balance"] == pytest.approx(1.5) and stats["feeder_cpu_share"] == pytest.approx(0.2)
