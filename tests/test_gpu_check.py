"""Issue 16's GPU check (scripts/gpu_check.sh → bench/gpu_check.py, bench/gpu_speed.py) keeps running between
the rare sessions that have a GPU: its measurements and its report, exercised on the CPU with tiny sizes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STEP_NAMES = {"tests", "vitb16", "train_eval", "embed_index", "enn_local"}


def _bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is scripts, not an installed package
    return importlib.import_module(f"bench.{name}")


def test_report_names_every_step_even_when_none_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _bench(monkeypatch, "gpu_check")
    assert set(gpu_check.STEPS) == STEP_NAMES
    assert gpu_check.main(["--dry-run", "--steps", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(report["steps"]) == STEP_NAMES
    assert {step["status"] for step in report["steps"].values()} == {"skipped"}
    assert report["environment"]["device"] == "cpu" and report["environment"]["versions"]["torch"]


@pytest.mark.parametrize("measurement", ["vitb16", "enn_local"])
def test_speed_measurement_runs_tiny_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measurement: str) -> None:
    gpu_speed = _bench(monkeypatch, "gpu_speed")
    out = tmp_path / f"{measurement}.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads, and lose much on a shared CPU
    try:
        gpu_speed.main([measurement, "--device", "cpu", "--tiny", "--steps", "1", "--infer-runs", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    if measurement == "vitb16":
        assert set(result["train"]) == {"plain", "penalty", "exact"}
        assert all(result[f"{v}_vs_plain"] > 0 for v in ("penalty", "exact", "merged"))
    else:
        assert set(result["stages"]) == {"2", "4", "8"}
        for stages, row in result["stages"].items():
            assert len(row["unit_ms"]) == int(stages) and row["speedup_vs_bp_1gpu"] > 0


@pytest.mark.slow
def test_dry_run_passes_every_step(tmp_path: Path) -> None:
    """The whole script as the GPU session runs it, on the CPU (about 3 minutes on a busy 2-core machine)."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "GPU_CHECK_SITE": str(tmp_path / "site"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--work", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert proc.returncode == 0 and statuses == dict.fromkeys(STEP_NAMES, "ok"), proc.stdout[-3000:]
