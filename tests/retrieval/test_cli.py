"""The console script: command list, unknown commands, one-line errors (through a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

from retrieval.cli import COMMANDS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrieval.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_planned_command():
    result = _run("--help")
    assert result.returncode == 0
    for name in ("data", "train", "eval", "embed", "index", "export", "serve", "demo"):
        assert name in COMMANDS and f"  {name}" in result.stdout


def test_unknown_command_exits_2_with_usage():
    result = _run("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = _run("train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "missing.yaml" in result.stderr
