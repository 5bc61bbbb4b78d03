"""docs/api.md is generated from the OpenAPI schema: it must be current, and its JSON examples must work."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from service_testing import AUTH

ROOT = Path(__file__).resolve().parents[2]


def test_api_docs_are_up_to_date_with_the_schema():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + "\n(re-generate: .venv/bin/python scripts/gen_api_docs.py)"


def test_every_json_curl_example_is_accepted_by_the_service(client):
    examples = re.findall(r"^curl .*-d .*$", (ROOT / "docs" / "api.md").read_text(), flags=re.MULTILINE)
    assert len(examples) >= 4
    for line in examples:
        words = shlex.split(line)
        url = next(w for w in words if w.startswith("http://"))
        path = "/" + url.split("/", 3)[3]
        headers = AUTH if any("Authorization" in w for w in words) else {}
        body = json.loads(words[words.index("-d") + 1])
        method = words[words.index("-X") + 1] if "-X" in words else "POST"
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 200, f"{line}\n→ {response.status_code} {response.text}"
