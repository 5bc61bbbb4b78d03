"""Tuning when the target recall is out of reach: stop at the plateau, keep the cheapest setting near the best."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

tune_module = importlib.import_module("retrieval.index.tune")  # the package re-exports the function `tune`


class FakeCollection:
    """Records the settings it is configured with; recall per setting comes from the patched measure."""

    def __init__(self, kind: str) -> None:
        self.kind, self.modality, self.configured = kind, "image", []

    def configure(self, settings: dict) -> None:
        self.configured.append(settings)


@pytest.fixture
def curve(monkeypatch):
    def use(kind: str, recalls: list[float]) -> FakeCollection:
        grid = [{"nprobe": 2**i} for i in range(len(recalls))]
        monkeypatch.setattr(tune_module, "candidate_settings", lambda collection: grid)
        monkeypatch.setattr(tune_module, "measure_recall",
                            lambda collection, probe: recalls[collection.configured[-1]["nprobe"].bit_length() - 1])
        return FakeCollection(kind)
    return use


def test_a_capped_recall_stops_at_the_plateau_and_keeps_the_cheapest_near_best(curve):
    collection = curve("ondisk", [0.90, 0.95, 0.968, 0.9695, 0.9698, 0.9699, 0.9699, 0.97])
    settings, recall = tune_module.tune(collection, SimpleNamespace(k=10), target=0.98)
    assert settings == {"nprobe": 4} and recall == 0.968  # within 0.002 of the best, 4 lists instead of 16+
    assert len(collection.configured) == 6  # stopped after two steps without a gain, not at nprobe 128
    assert collection.configured[-1] == {"nprobe": 4}  # the kept setting is the one left configured


def test_the_target_still_wins_as_soon_as_it_is_reached(curve):
    collection = curve("hnsw", [0.90, 0.95, 0.981, 0.99])
    assert tune_module.tune(collection, SimpleNamespace(k=10), target=0.98) == ({"nprobe": 4}, 0.981)


def test_a_slow_steady_climb_is_not_a_plateau(curve):
    collection = curve("ondisk", [0.90, 0.93, 0.95, 0.96, 0.97, 0.975, 0.978])
    settings, recall = tune_module.tune(collection, SimpleNamespace(k=10), target=0.98)
    assert settings == {"nprobe": 64} and len(collection.configured) == 8  # every step gained: all tried, best kept
