"""`retrieval demo`: the whole pipeline on a tiny config, reuse on a second run, and failures that name
their step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from retrieval.cli import main as cli_main
from retrieval.demo import DemoPaths, remove_outputs

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "synth-tiny.yaml")


@pytest.mark.slow
def test_demo_runs_end_to_end_then_reuses_its_outputs(tmp_path, capsys):
    argv = ["demo", "--config", TINY, "--workdir", str(tmp_path), "--images", "200", "--no-serve"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    paths = DemoPaths(tmp_path)
    assert paths.best.is_file() and paths.eval_json.is_file() and (paths.index / "manifest.json").is_file()
    assert re.search(r"^model\s+[\d.]+\s+[\d.]+", out, flags=re.MULTILINE)  # the recall table's model row
    for header in ("text → images", "image → texts"):
        section = out.split(header, 1)[1]
        assert re.findall(r"^  [1-5]\. -?\d\.\d{3}  ", section, flags=re.MULTILINE)[:5], f"no results after {header}"
    url = re.search(r"service ready at (http://127\.0\.0\.1:\d+)", out).group(1)
    with pytest.raises(httpx.HTTPError):  # --no-serve: the service is gone
        httpx.get(f"{url}/healthz", timeout=2)
    report = json.loads(paths.eval_json.read_text())
    assert report["split"] == "test" and report["images"] == 20  # 200 images → 20 held out for test

    assert cli_main(argv) == 0  # second run: nothing is redone
    again = capsys.readouterr().out
    assert f"reusing {paths.eval_json}" in again and f"reusing {paths.index}" in again
    assert f"reusing {paths.best}" in again and "text → images" in again


def test_a_failing_step_is_named_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochz: 1\n")
    code = cli_main(["demo", "--config", str(bad), "--workdir", str(tmp_path), "--images", "20", "--no-serve"])
    err = capsys.readouterr().err.strip()  # (the data step's progress bar is on stderr too)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("retrieval demo: error: step train failed") and "epochz" in err
    assert DemoPaths(tmp_path).dataset.is_file()  # the data step before it did run


def test_fresh_removes_only_what_the_demo_made(tmp_path):
    paths = DemoPaths(tmp_path)
    (paths.run / "checkpoints").mkdir(parents=True)
    paths.images.mkdir(parents=True)
    paths.dataset.write_text(json.dumps({"dataset": "synth", "images": []}))
    assert set(remove_outputs(paths)) == {paths.run, paths.data}
    assert not paths.run.exists() and not paths.data.exists()
    paths.images.mkdir(parents=True)
    paths.dataset.write_text(json.dumps({"dataset": "flickr30k", "images": []}))  # someone else's data
    assert remove_outputs(paths) == [] and paths.dataset.is_file()


def test_missing_config_is_a_user_error(tmp_path, capsys):
    assert cli_main(["demo", "--config", str(tmp_path / "none.yaml"), "--workdir", str(tmp_path)]) == 2
    assert "file not found" in capsys.readouterr().err
