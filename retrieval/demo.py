"""Pieces of `retrieval demo` that are not printing: where each step writes, what already exists, the
service in a background thread, and real HTTP queries against it.

Layout under the work directory W: W/data/synth (dataset), W/runs/demo (training run: config.yaml,
checkpoints/, metrics.jsonl, curves.png), W/runs/demo/eval-test.json, W/runs/demo/index (FAISS index +
item store) — the paths docker/compose.yaml mounts by default.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from retrieval.errors import UserError


@dataclass(frozen=True)
class DemoPaths:
    """Every file and folder the demo reads or writes, under one work directory."""

    workdir: Path

    @property
    def data(self) -> Path:
        return self.workdir / "data" / "synth"

    @property
    def dataset(self) -> Path:
        return self.data / "dataset.json"

    @property
    def images(self) -> Path:
        return self.data / "images"

    @property
    def run(self) -> Path:
        return self.workdir / "runs" / "demo"

    @property
    def best(self) -> Path:
        return self.run / "checkpoints" / "best.pt"

    @property
    def last(self) -> Path:
        return self.run / "checkpoints" / "last.pt"

    @property
    def train_stamp(self) -> Path:
        return self.run / "demo-train.json"

    @property
    def eval_json(self) -> Path:
        return self.run / "eval-test.json"

    @property
    def index(self) -> Path:
        return self.run / "index"


def remove_outputs(paths: DemoPaths) -> list[Path]:
    """`--fresh`: delete the demo's run folder and its synth dataset (nothing else); returns what went."""
    removed = []
    if paths.run.exists():
        shutil.rmtree(paths.run)
        removed.append(paths.run)
    if paths.dataset.is_file():
        try:
            is_synth = json.loads(paths.dataset.read_text()).get("dataset") == "synth"
        except (OSError, ValueError, AttributeError):
            is_synth = False
        if is_synth:  # never delete a folder the synth generator did not write
            shutil.rmtree(paths.data)
            removed.append(paths.data)
    return removed


def checkpoint_fingerprint(path: Path) -> str:
    """The model fingerprint recorded in a checkpoint (what indexes and eval reports are keyed by)."""
    from retrieval.checkpoint import read_checkpoint

    return str(read_checkpoint(path).get("fingerprint", ""))


def config_digest(config: dict[str, Any]) -> str:
    """Identity of a resolved run config (the demo's training is reused only for the same one)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_done(paths: DemoPaths, digest: str) -> bool:
    """The demo finished training this config before, and best.pt is still the model it finished with."""
    try:
        stamp = json.loads(paths.train_stamp.read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("config") == digest and paths.best.is_file() and stamp.get("fingerprint") == checkpoint_fingerprint(paths.best)


def mark_trained(paths: DemoPaths, digest: str) -> None:
    """Record a finished training (config digest + best.pt fingerprint), so a re-run skips the step."""
    stamp = {"config": digest, "fingerprint": checkpoint_fingerprint(paths.best)}
    paths.train_stamp.write_text(json.dumps(stamp) + "\n")


def reusable_eval(paths: DemoPaths, fingerprint: str) -> dict[str, Any] | None:
    """The saved test-split evaluation, if it was made with this very model."""
    try:
        report = json.loads(paths.eval_json.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("fingerprint") == fingerprint else None


def reusable_index(paths: DemoPaths, fingerprint: str) -> bool:
    """An index folder built with this very model (the server would refuse any other)."""
    from retrieval.index import read_manifest

    try:
        return read_manifest(paths.index).fingerprint == fingerprint
    except UserError:
        return False


def pick_port(preferred: int, strict: bool) -> int:
    """`preferred` if it is free; else (unless `strict`) any free port on 127.0.0.1."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            if strict:
                raise UserError(f"port {preferred} on 127.0.0.1 is in use; pass another --port") from None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """The real service (create_app + uvicorn) on 127.0.0.1:port, in a thread, so the demo can query it
    and then either stop it or wait for Ctrl-C."""

    def __init__(self, index: Path, checkpoint: Path, port: int) -> None:
        import uvicorn

        from service.app import create_app
        from service.engine import load_engine
        from service.settings import Settings

        settings = Settings.from_env(index_dir=index, checkpoint=checkpoint)
        app = create_app(settings, engine=load_engine(settings))  # fails here, before the port is bound
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, name="retrieval-service", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        """Start serving and wait until /readyz answers 200."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise UserError(f"the service stopped while starting (is {self.url} free?)")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise UserError(f"the service did not become ready within {timeout:.0f} s")

    def wait(self) -> None:
        """Block until the server thread ends (Ctrl-C raises KeyboardInterrupt here)."""
        while self.thread.is_alive():
            self.thread.join(0.5)

    def stop(self) -> None:
        """Graceful shutdown: pending index changes are written before the thread ends."""
        self.server.should_exit = True
        self.thread.join(30)


@dataclass(frozen=True)
class DemoQueries:
    """A held-out test caption with its image, and a held-out test image with its captions."""

    text: str
    text_image: str  # file name of the image the caption describes
    image_path: Path
    image_captions: list[str]


def pick_queries(paths: DemoPaths) -> DemoQueries:
    """Queries from the test split (the index holds the test split, so the right answers are in it)."""
    images = [entry for entry in json.loads(paths.dataset.read_text())["images"] if entry["split"] == "test"]
    if len(images) < 2:
        raise UserError(f"{paths.dataset}: the test split has fewer than 2 images")
    first, second = images[0], images[len(images) // 2]
    return DemoQueries(
        text=first["sentences"][0]["raw"],
        text_image=first["filename"],
        image_path=paths.images / second["filename"],
        image_captions=[s["raw"] for s in second["sentences"]],
    )


def search_text(url: str, text: str, target: str, k: int) -> dict[str, Any]:
    """POST /v1/search with a text query."""
    response = httpx.post(f"{url}/v1/search", json={"text": text, "target": target, "k": k}, timeout=60)
    return _json(response)


def search_image(url: str, image: Path, target: str, k: int) -> dict[str, Any]:
    """POST /v1/search/image with an image file."""
    with open(image, "rb") as handle:
        files = {"file": (image.name, handle, "image/png")}
        response = httpx.post(f"{url}/v1/search/image", files=files, data={"target": target, "k": str(k)}, timeout=60)
    return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise UserError(f"{response.request.method} {response.request.url.path} → {response.status_code}: {response.text[:300]}")
    return response.json()
