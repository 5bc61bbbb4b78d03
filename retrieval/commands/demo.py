"""`retrieval demo`: the whole pipeline on the embedded synthetic dataset, ending with a running service.

synthetic dataset → train (configs/synth-demo.yaml: ENN-ℓ in 2 processes) → test-split recall table → index of
the test split → service on 127.0.0.1 → one text and one image query over HTTP → the service keeps running
(Ctrl-C stops it). Re-running reuses every finished step; `--fresh` starts over. Each step runs the same code as its own
command (`retrieval data synth`, `train`, `eval`, `index build`, `serve`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrieval.errors import UserError

STEPS = 6
DEFAULT_CONFIG = "configs/synth-demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The `retrieval demo` parser."""
    parser = argparse.ArgumentParser(
        prog="retrieval demo",
        description="Run the whole pipeline on the embedded synthetic dataset and leave the search service "
        "running. Finished steps are reused when run again.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"training config (default {DEFAULT_CONFIG})")
    parser.add_argument("--workdir", default=".", type=Path,
                        help="where data/synth and runs/demo go (default: the current folder)")
    parser.add_argument("--images", type=int, default=20000, help="synthetic dataset size (default 20000)")
    parser.add_argument("--port", type=int, help="service port (default 8000, or a free one if 8000 is taken)")
    parser.add_argument("--no-serve", action="store_true", help="stop the service after the two queries")
    parser.add_argument("--fresh", action="store_true", help="delete the demo's dataset and run, start over")
    parser.add_argument("-k", type=int, default=5, help="results shown per query (default 5)")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `retrieval demo`."""
    args = build_parser().parse_args(argv)
    if not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: file not found (run from the repository root, or pass --config)")
    from retrieval.demo import DemoPaths, remove_outputs

    paths = DemoPaths(args.workdir)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo prints its own requests
    started = time.perf_counter()
    if args.fresh:
        for removed in remove_outputs(paths):
            print(f"--fresh: removed {removed}")
    errors = paths.workdir / "runs" / "demo-error.log"
    _step(1, "data", lambda: _data(args, paths), errors)
    _step(2, "train", lambda: _train(args, paths), errors)
    fingerprint = _step(3, "eval", lambda: _eval(paths), errors)
    _step(4, "index", lambda: _index(paths, fingerprint), errors)
    server = _step(5, "serve", lambda: _serve(args, paths), errors)
    try:
        _step(6, "query", lambda: _queries(args, paths, server.url), errors)
    except BaseException:
        server.stop()
        raise
    print(f"\ndemo pipeline done in {time.perf_counter() - started:.0f} s")
    if args.no_serve:
        server.stop()
        print("service stopped (--no-serve)")
        return 0
    print(f"\nThe service is running: open {server.url}/ in a browser (API docs at {server.url}/docs).")
    print(f"Serve it again later: .venv/bin/retrieval serve --index {paths.index} --checkpoint {paths.run}")
    print("Press Ctrl-C to stop.")
    try:
        server.wait()
    except KeyboardInterrupt:
        print("\nstopping the service…")
        server.stop()
    return 0


def _step(number: int, name: str, action: Callable[[], Any], error_log: Path) -> Any:
    """Run one step; any failure becomes a one-line UserError naming the step (an unexpected one also
    leaves its traceback in `error_log`, for a bug report)."""
    print(f"\n[{number}/{STEPS}] {name}", flush=True)
    start = time.perf_counter()
    try:
        result = action()
        print(f"[{number}/{STEPS}] {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        return result
    except UserError as err:
        raise UserError(f"step {name} failed: {err}") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        error_log.parent.mkdir(parents=True, exist_ok=True)
        error_log.write_text(traceback.format_exc())
        raise UserError(f"step {name} failed unexpectedly: {type(err).__name__}: {err} (traceback in {error_log})") from None


def _run_command(name: str, argv: list[str]) -> None:
    """Run `retrieval NAME ARGV` in-process (same code and output as the command itself)."""
    import importlib

    print("$ retrieval " + " ".join([name, *argv]), flush=True)
    code = importlib.import_module(f"retrieval.commands.{name}").main(argv)
    if code:
        raise UserError(f"`retrieval {name}` exited with code {code}")


def _data(args: argparse.Namespace, paths) -> None:
    print(f"synthetic dataset in {paths.data} ({args.images} images; kept if it already exists)")
    _run_command("data", ["synth", "--out", str(paths.data), "--images", str(args.images)])


def _train(args: argparse.Namespace, paths) -> None:
    from retrieval.config import load_config
    from retrieval.demo import config_digest, mark_trained, training_done

    overrides = [f"data.path={paths.dataset}", f"data.images={paths.images}"]
    digest = config_digest(load_config(args.config, overrides))
    if training_done(paths, digest):
        print(f"reusing {paths.best} (this config was trained to the end; --fresh retrains)")
        return
    argv = ["--config", str(args.config), "--out", str(paths.run)]
    for override in overrides:
        argv += ["--set", override]
    if paths.last.is_file():
        print(f"{paths.run} holds a run: resuming it (a finished one only gets checked)")
        argv.append("--resume")
    else:
        print(f"training {args.config} into {paths.run}")
    _run_command("train", argv)
    if not paths.best.is_file():
        raise UserError(f"training ended without {paths.best} (no validation ran?)")
    mark_trained(paths, digest)


def _eval(paths) -> str:
    from retrieval.commands.eval import format_table
    from retrieval.demo import checkpoint_fingerprint, reusable_eval

    fingerprint = checkpoint_fingerprint(paths.best)
    report = reusable_eval(paths, fingerprint)
    if report is not None:
        print(f"reusing {paths.eval_json} (model {fingerprint})")
        print(f"split 'test': {report['images']} images, {report['captions']} captions")
        print(format_table(report["results"]))
        return fingerprint
    _run_command("eval", ["--checkpoint", str(paths.run), "--data", str(paths.dataset), "--images",
                          str(paths.images), "--split", "test", "--random-baseline", "--json", str(paths.eval_json)])
    return fingerprint


def _index(paths, fingerprint: str) -> None:
    from retrieval.demo import reusable_index

    if reusable_index(paths, fingerprint):
        print(f"reusing {paths.index} (built by model {fingerprint})")
        return
    _run_command("index", ["build", "--checkpoint", str(paths.run), "--data", str(paths.dataset), "--images",
                           str(paths.images), "--split", "test", "--out", str(paths.index), "--force"])


def _serve(args: argparse.Namespace, paths):
    from retrieval.demo import BackgroundServer, pick_port

    port = pick_port(args.port or 8000, strict=args.port is not None)
    if args.port is None and port != 8000:
        print(f"port 8000 is in use; using {port}")
    server = BackgroundServer(paths.index, paths.run, port)
    server.start()
    print(f"service ready at {server.url} (index {paths.index}, model {paths.run})")
    return server


def _queries(args: argparse.Namespace, paths, url: str) -> None:
    from retrieval.demo import pick_queries, search_image, search_text

    queries = pick_queries(paths)
    body = {"text": queries.text, "target": "image", "k": args.k}
    print(f"text → images: POST {url}/v1/search  {json.dumps(body)}")
    response = search_text(url, queries.text, "image", args.k)
    for rank, hit in enumerate(response["results"], 1):
        name = Path(hit["uri"] or "").name
        mark = "  ← the image this caption was written for" if name == queries.text_image else ""
        print(f"  {rank}. {hit['score']:.3f}  {name}  ({hit['caption'] or ''}){mark}")
    print(f"  ({response['took_ms']:.1f} ms)")

    print(f"\nimage → texts: POST {url}/v1/search/image  file={queries.image_path}, target=text")
    response = search_image(url, queries.image_path, "text", args.k)
    for rank, hit in enumerate(response["results"], 1):
        mark = "  ← one of this image's captions" if hit["caption"] in queries.image_captions else ""
        print(f"  {rank}. {hit['score']:.3f}  {hit['caption']}{mark}")
    print(f"  ({response['took_ms']:.1f} ms)")
