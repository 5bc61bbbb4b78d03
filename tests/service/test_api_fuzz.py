"""Schemathesis against a live server: every check (schema conformance of responses, status codes, content
types, valid data accepted, invalid data rejected, Allow headers, …) over the examples, coverage, fuzzing and
stateful phases, writes included. Any server error (500) or schema violation fails the test.

Deterministic (fixed seed, no example database) and bounded (a few examples per operation): about a minute
on 2 busy cores. Hooks that teach the generator real images and the one cross-field rule are in
fuzz_hooks.py, settings in schemathesis.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_testing import API_KEY, LiveServer, make_settings

from service.app import create_app

HERE = Path(__file__).resolve().parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 12
SEED = 20240614


@pytest.fixture(scope="module")
def server(module_index: Path, checkpoint: Path):
    """The real app on a real port, writes enabled with the test key."""
    with LiveServer(create_app(make_settings(module_index, checkpoint))) as live:
        yield live


def test_schemathesis_finds_no_failure(server, tmp_path):
    if not SCHEMATHESIS.exists():
        pytest.fail(f"{SCHEMATHESIS} is missing: schemathesis is a dev dependency (bash scripts/setup.sh)")
    command = [
        str(SCHEMATHESIS), "--no-color", "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{server.url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
        "--workers", "1", "--request-timeout", "30", "--header", f"Authorization: Bearer {API_KEY}",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": str(HERE)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    report = "\n".join(line if len(line) < 400 else line[:400] + " …" for line in (done.stdout + done.stderr).splitlines())
    assert done.returncode == 0, report[-15_000:]
