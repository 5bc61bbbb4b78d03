"""Hostile requests against a running `retrieval serve`, as an attacker would send them by hand.

Each probe is one raw HTTP request (NaN and Infinity literals, integers of any size, lone surrogates, deep
nesting, uris that point into the index folder); reads go without a key, writes with it. After the probes the
script checks what must still hold: filtered searches and listings answer, every id a probe got acknowledged is
still there, and the item count grew by exactly the acknowledged adds. It prints a table and writes JSON.

Usage: start a server (`retrieval serve --index DIR --checkpoint CKPT --api-key KEY --port 8123`), then
.venv/bin/python bench/hostile_probes.py --url http://127.0.0.1:8123 --api-key KEY --index DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "hostile_probes.json"
JSON = {"Content-Type": "application/json"}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0000003"
                    "010100c9fe92ef0000000049454e44ae426082")


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"1" + b"]" * levels


def probes(index: Path, dim: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, requests keyword arguments); `auth` in the kwargs marks a write with the key."""
    vector = [0.1] * dim

    def search(filt: bytes) -> dict[str, Any]:
        return {"data": b'{"text": "a red circle", "filter": ' + filt + b"}", "headers": JSON}

    def add_meta(meta: bytes) -> dict[str, Any]:
        return {"data": b'{"texts": ["hostile"], "metadata": [' + meta + b"]}", "headers": JSON, "auth": True}

    def add_uri(uri: str) -> dict[str, Any]:
        body = {"items": [{"modality": "image", "uri": uri, "embedding": vector}]}
        return {"data": json.dumps(body).encode(), "headers": JSON, "auth": True}

    return [
        ("filter: integer 10^23", "POST", "/v1/search", search(b'{"year": 100000000000000000000000}')),
        ("filter: gte 10^23", "POST", "/v1/search", search(b'{"year": {"gte": 100000000000000000000000}}')),
        ("filter: NaN", "POST", "/v1/search", search(b'{"year": NaN}')),
        ("filter: in [Infinity]", "POST", "/v1/search", search(b'{"year": {"in": [1, Infinity]}}')),
        ("filter: 2^53 + 1", "POST", "/v1/search", search(b'{"year": 9007199254740993}')),
        ("filter: nested 5000 deep", "POST", "/v1/search", search(_deep(5000))),
        ("filter: 33 fields", "POST", "/v1/search", search(json.dumps({f"f{n}": 1 for n in range(33)}).encode())),
        ("filter: lone surrogate value", "POST", "/v1/search", search(b'{"c": "\\ud800"}')),
        ("list filter: integer 10^23", "GET", "/v1/items?filter=%7B%22year%22%3A100000000000000000000000%7D", {}),
        ("batch filter: 1e400", "POST", "/v1/search/batch",
         {"data": b'{"queries": [{"text": "x", "filter": {"y": {"lt": 1e400}}}]}', "headers": JSON}),
        ("search text: lone surrogate", "POST", "/v1/search", {"data": b'{"text": "a\\udc80"}', "headers": JSON}),
        ("knn-service text: lone surrogate", "POST", "/knn-service", {"data": b'{"text": "a\\udc80"}', "headers": JSON}),
        ("search: k = 10^30", "POST", "/v1/search", {"data": b'{"text": "x", "k": 1000000000000000000000000000000}',
                                                    "headers": JSON}),
        ("search: embedding with NaN", "POST", "/v1/search",
         {"data": ("{\"embedding\": [NaN" + ", 0.1" * (dim - 1) + "]}").encode(), "headers": JSON}),
        ("list: offset 10^30", "GET", "/v1/items?offset=1000000000000000000000000000000", {}),
        ("item: id 10^23", "GET", "/v1/items/100000000000000000000000", {}),
        ("add: metadata NaN", "POST", "/v1/items", add_meta(b'{"y": NaN}')),
        ("add: metadata 1e400", "POST", "/v1/items", add_meta(b'{"y": 1e400}')),
        ("add: metadata integer 10^30", "POST", "/v1/items", add_meta(b'{"y": 1000000000000000000000000000000}')),
        ("add: metadata nested 40 deep", "POST", "/v1/items", add_meta(b'{"y": ' + _deep(40) + b"}")),
        ("add: metadata lone-surrogate key", "POST", "/v1/items", add_meta(b'{"\\ud800": 1}')),
        ("add: text lone surrogate", "POST", "/v1/items",
         {"data": b'{"texts": ["a\\ud800"]}', "headers": JSON, "auth": True}),
        ("patch: metadata Infinity", "PATCH", "/v1/items/1",
         {"data": b'{"metadata": {"y": Infinity}}', "headers": JSON, "auth": True}),
        ("multipart: metadata NaN", "POST", "/v1/items",
         {"files": {"files": ("a.png", PNG, "image/png")}, "data": {"metadata": '{"y": NaN}'}, "auth": True}),
        ("multipart: file name not UTF-8", "POST", "/v1/items",
         {"data": b'--XX\r\nContent-Disposition: form-data; name="files"; filename="caf\xe9.png"\r\n'
                  b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--XX--\r\n",
          "headers": {"Content-Type": "multipart/form-data; boundary=XX"}, "auth": True}),
        ("add: uri x:/../items.sqlite", "POST", "/v1/items", add_uri("x:/../items.sqlite")),
        ("add: uri y:/../manifest.json", "POST", "/v1/items", add_uri("y:/../manifest.json")),
        ("add: uri file:// the store", "POST", "/v1/items", add_uri(f"file://{index.resolve()}/items.sqlite")),
        ("add: uri https (external)", "POST", "/v1/items", add_uri("https://example.com/a.jpg")),
    ]


def wait_ready(session: requests.Session, url: str, timeout_s: float = 180.0) -> None:
    """Until the server answers /readyz with 200 (it loads the model and index first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if session.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready within {timeout_s:.0f} s")


def run(url: str, key: str, index: Path) -> dict[str, Any]:
    session = requests.Session()
    wait_ready(session, url)
    info = session.get(f"{url}/v1/info", timeout=30).json()
    total = lambda: session.get(f"{url}/v1/items", params={"limit": 1}, timeout=30).json()["total"]  # noqa: E731
    before = total()
    rows, acknowledged = [], []
    for name, method, path, kwargs in probes(index, info["dim"]):
        kwargs = dict(kwargs)
        headers = dict(kwargs.pop("headers", {}))
        if kwargs.pop("auth", False):
            headers["Authorization"] = f"Bearer {key}"
        try:
            answer = session.request(method, url + path, headers=headers, timeout=60, **kwargs)
        except requests.ConnectionError:  # the server dropped the connection: an unhandled error, like a 500
            rows.append({"probe": name, "status": 599, "note": "connection reset by the server"})
            continue
        row = {"probe": name, "status": answer.status_code}
        if method == "POST" and path == "/v1/items" and answer.status_code == 200:
            ids = answer.json()["ids"]
            acknowledged += ids
            if "uri" in name:  # what the image route then serves for it, without a key
                image = session.get(f"{url}/v1/items/{ids[0]}/image", timeout=30)
                row["image_route"] = f"{image.status_code} ({len(image.content)} bytes, {image.headers.get('content-type')})"
        rows.append(row)
    after = [("filtered search (text)", session.post(f"{url}/v1/search", json={"text": "red", "target": "text",
                                                                                "filter": {"y": {"gte": 0}}}, timeout=60)),
             ("filtered search (image)", session.post(f"{url}/v1/search", json={"text": "red", "filter": {"n": 1}},
                                                      timeout=60)),
             ("filtered listing", session.get(f"{url}/v1/items", params={"filter": '{"y": {"gte": 0}}'}, timeout=60)),
             ("listing", session.get(f"{url}/v1/items", params={"limit": 1000, "offset": max(0, before - 10)}, timeout=60))]
    rows += [{"probe": f"afterwards: {name}", "status": answer.status_code} for name, answer in after]
    lost = [i for i in acknowledged if session.get(f"{url}/v1/items/{i}", timeout=30).status_code != 200]
    return {"probes": rows, "acknowledged_ids": acknowledged, "acknowledged_lost": lost,
            "count_before": before, "count_after": total(), "server_errors": sum(r["status"] >= 500 for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=os.environ.get("RETRIEVAL_API_KEY"))
    parser.add_argument("--index", required=True, help="the served index folder (for the file: uri probe)")
    parser.add_argument("--label", default="", help="what is being probed (a commit), recorded in the JSON")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    result = run(args.url.rstrip("/"), args.api_key, Path(args.index))
    for row in result["probes"]:
        shown = "reset" if row["status"] == 599 else row["status"]
        print(f"{shown:>5}  {row['probe']}" + (f"  → image route {row['image_route']}" if "image_route" in row else ""))
    print(f"acknowledged adds: {len(result['acknowledged_ids'])}, lost: {len(result['acknowledged_lost'])}; "
          f"items {result['count_before']} → {result['count_after']}; 5xx answers: {result['server_errors']}")
    result.update(label=args.label, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
