"""The demo's queries on the search page, as a user sees them: where the image each was written for lands,
and a screenshot of the page with a real result (issue 28 §3).

After `make demo` (its model, test-split index and dataset under --workdir), this serves the index with the
real app, then for each query — the demo's first query (a held-out test caption, `retrieval.demo.pick_queries`)
and the page's own example (the search box's placeholder) — asks the API for the top --k images and finds the
rank of the image the text was written for: the caption's own image for the demo query; for the example, every
test image one of whose captions is that very sentence (none may exist: then it has no target and says so). The
page is then driven in headless Chromium through the same set-up as the web-page test
(tests/service/chromium.py): the demo query is typed into the search box and, once the thumbnails have loaded,
the page is saved as a PNG.

    .venv/bin/python bench/page_check.py                 # after `make demo`; writes docs/page-demo-query.png
    .venv/bin/python bench/page_check.py --workdir W --checkpoint W/runs/demo/checkpoints/best.pt

Prints a table and writes bench/results/page_check.json. Exit status 0 whatever the ranks: a benchmark.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "service"))
PAGE = ROOT / "service" / "static" / "index.html"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".", help="the demo's work directory (data/synth, runs/demo)")
    parser.add_argument("--checkpoint", default=None, help="default: the demo's best.pt")
    parser.add_argument("--index", default=None, help="default: the demo's index")
    parser.add_argument("--k", type=int, default=10, help="results asked for (ranks beyond are 'not in top k')")
    parser.add_argument("--screenshot", default="docs/page-demo-query.png")
    parser.add_argument("--out", default="bench/results/page_check.json")
    return parser.parse_args()


def example_query() -> str:
    """The search box's example, as the page shows it ("e.g. …" placeholder)."""
    match = re.search(r'id="query-text"[^>]*placeholder="e\.g\. ([^"]+)"', PAGE.read_text())
    if match is None:
        sys.exit(f"{PAGE}: no 'e.g. …' placeholder on the query box")
    return match.group(1)


def rank_of(url: str, text: str, targets: set[str], k: int) -> dict[str, Any]:
    """The 1-based rank of the first result whose file is one of `targets`, among the top k images."""
    from retrieval.demo import search_text

    hits = search_text(url, text, "image", k)["results"]
    files = [Path(hit["uri"]).name for hit in hits]
    rank = next((i + 1 for i, name in enumerate(files) if name in targets), None)
    return {"query": text, "targets": sorted(targets), "rank": rank, "top_files": files[:5],
            "top_captions": [hit.get("caption") for hit in hits[:5]]}


def screenshot(url: str, text: str, path: Path) -> None:
    """The page after typing `text`, once its thumbnails have loaded, saved as a PNG."""
    from chromium import browser_unavailable, loaded_thumbnails, start_chromium, wait_for
    from selenium import webdriver

    reason = browser_unavailable()
    if reason:
        sys.exit(f"no screenshot: {reason}")
    driver = start_chromium(webdriver)
    try:
        driver.set_window_size(1200, 1000)
        driver.get(url + "/")
        wait_for(driver, lambda d: "model" in d.find_element("id", "info").text, "the info line")
        driver.find_element("id", "query-text").send_keys(text + "\n")
        wait_for(driver, lambda d: len(loaded_thumbnails(d)) >= 6, "the result thumbnails")
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def main() -> None:
    from retrieval.demo import BackgroundServer, DemoPaths, pick_port, pick_queries

    args = parse_args()
    paths = DemoPaths(Path(args.workdir))
    checkpoint = Path(args.checkpoint) if args.checkpoint else paths.best
    index = Path(args.index) if args.index else paths.index
    for needed in (checkpoint, index, paths.dataset):
        if not needed.exists():
            sys.exit(f"{needed}: not found (run `make demo` first, or pass --workdir/--checkpoint/--index)")
    demo = pick_queries(paths)
    example = example_query()
    test_images = [im for im in json.loads(paths.dataset.read_text())["images"] if im["split"] == "test"]
    example_targets = {im["filename"] for im in test_images
                       if any(s["raw"].strip().lower() == example.lower() for s in im["sentences"])}
    server = BackgroundServer(index, checkpoint, pick_port(8765, strict=False))
    server.start()
    try:
        rows = {"demo_first_query": rank_of(server.url, demo.text, {demo.text_image}, args.k),
                "page_example_query": rank_of(server.url, example, example_targets, args.k)}
        screenshot(server.url, demo.text, ROOT / args.screenshot)
    finally:
        server.stop()
    for name, row in rows.items():
        where = f"rank {row['rank']}" if row["rank"] else (
            f"not in the top {args.k}" if row["targets"] else "no test image has this caption")
        top3 = "yes" if row["rank"] and row["rank"] <= 3 else "no"
        print(f"{name:<20} {where:<28} top 3: {top3:<4} {row['query']!r}")
    report = {"benchmark": "page_check", "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "checkpoint": str(checkpoint), "index": str(index), "k": args.k, "screenshot": args.screenshot,
              "queries": rows}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
