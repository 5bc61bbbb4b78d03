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


def test_the_served_schema_states_this_servers_rules(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    search = components["SearchRequest"]
    assert [branch["required"] for branch in search["oneOf"]] == [
        ["text"], ["image_b64"], ["embedding"], ["item_id"], ["text", "image_b64"]]
    embedding = search["properties"]["embedding"]
    assert embedding["minItems"] == embedding["maxItems"] == 32  # the loaded model's dimension
    assert search["properties"]["k"]["maximum"] == 1000 and search["properties"]["k"]["minimum"] == 1
    assert search["properties"]["image_b64"]["format"] == "byte"
    assert not any(key.startswith("x-limit-") for key in json.dumps(schema).split('"'))
    upload = schema["paths"]["/v1/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["encoding"]["file"]["contentType"] == "image/*" and upload["schema"]["required"] == ["file"]
    item = schema["paths"]["/v1/items/{item_id}"]
    assert set(item) == {"get", "patch", "delete"}
    assert item["get"]["parameters"][0]["schema"]["maximum"] == 2**63 - 1024
    assert {"200", "401", "404", "422", "503"} <= set(item["get"]["responses"])
