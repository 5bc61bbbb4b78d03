"""The search page (`GET /`) driven in headless Chromium against a live server: text and image queries, the
metadata filter, min score and "more like this" show real results, and server errors are displayed.

The browser set-up (and what it needs) is in chromium.py, shared with bench/page_check.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chromium import browser_unavailable, loaded_thumbnails, start_chromium, wait_for
from service_testing import LiveServer, make_settings

from service.app import create_app

K = 6


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """A headless Chromium session through Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency (pip install -e .[dev])")
    reason = browser_unavailable()
    if reason:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    driver = start_chromium(webdriver)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(module_index: Path, checkpoint: Path) -> Iterator[LiveServer]:
    """The real app on a real port (the browser needs one)."""
    with LiveServer(create_app(make_settings(module_index, checkpoint))) as live:
        yield live


def _result_ids(driver) -> list[int]:
    return [int(el.get_attribute("data-id")) for el in driver.find_elements("css selector", "#results .result")]


def _api_search(server: LiveServer, **body) -> list[int]:
    response = httpx.post(f"{server.url}/v1/search", json={"k": K, **body}, timeout=30)
    response.raise_for_status()
    return [hit["id"] for hit in response.json()["results"]]


def test_text_query_shows_image_thumbnails_then_captions(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(K))
    browser.find_element("id", "query-text").send_keys("a red circle above a blue square\n")
    wait_for(browser, lambda d: len(loaded_thumbnails(d)) == K, f"{K} loaded thumbnails")
    assert _result_ids(browser) == _api_search(server, text="a red circle above a blue square", target="image")
    scores = [float(s.text) for s in browser.find_elements("css selector", "#results .score")]
    assert scores == sorted(scores, reverse=True)
    browser.save_screenshot(str(tmp_path / "text-to-image.png"))

    browser.find_element("css selector", 'input[name="target"][value="text"]').click()  # re-runs the query
    wait_for(browser, lambda d: d.find_elements("css selector", "#results .text-result"), "text results")
    captions = [el.text for el in browser.find_elements("css selector", "#results .text-result .caption")]
    assert len(captions) == K and all(captions)
    browser.save_screenshot(str(tmp_path / "text-to-text.png"))
    assert _result_ids(browser) == _api_search(server, text="a red circle above a blue square", target="text")


def test_image_query_finds_the_same_image_first(browser, server, dataset: Path, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    record = json.loads(dataset.read_text())["images"][3]
    picture = dataset.parent / "images" / record["filename"]
    # The real file picker (hidden <input type=file> behind the drop zone); choosing a file searches.
    browser.find_element("id", "query-file").send_keys(str(picture))
    wait_for(browser, lambda d: len(loaded_thumbnails(d)) > 0, "image-query results")
    first = browser.find_element("css selector", "#results .image-result")
    item = httpx.get(f"{server.url}/v1/items/{first.get_attribute('data-id')}", timeout=30).json()
    assert Path(item["uri"]).resolve() == picture.resolve()
    assert float(first.find_element("css selector", ".score").text) > 0.999  # itself, cosine ≈ 1
    browser.save_screenshot(str(tmp_path / "image-to-image.png"))


def test_server_errors_are_shown(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    browser.execute_script("document.getElementById('k').max = ''")  # let the request reach the server
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys("100000")
    browser.find_element("id", "query-text").send_keys("a green triangle\n")
    error = wait_for(browser, lambda d: d.find_element("id", "error").is_displayed() and d.find_element("id", "error"),
                     "the error box")
    assert error.text.startswith("422") and "k" in error.text
    assert not browser.find_elements("css selector", "#results .result")
    browser.save_screenshot(str(tmp_path / "error.png"))


def test_filter_min_score_and_more_like_this(browser, server, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(K))
    browser.find_element("id", "filter").send_keys('{"split": "test"}')
    browser.find_element("id", "min-score").send_keys("-1")
    browser.find_element("id", "query-text").send_keys("a small blue circle\n")
    query = {"text": "a small blue circle", "target": "image", "filter": {"split": "test"}, "min_score": -1}
    expected = _api_search(server, **query)
    wait_for(browser, lambda d: _result_ids(d) == expected, "the filtered results")
    assert expected and all(httpx.get(f"{server.url}/v1/items/{i}").json()["metadata"]["split"] == "test"
                            for i in expected)
    browser.save_screenshot(str(tmp_path / "filtered.png"))

    first = browser.find_element("css selector", "#results .result")
    item_id = int(first.get_attribute("data-id"))
    first.find_element("css selector", ".more-like").click()
    similar = _api_search(server, item_id=item_id, target="image", filter={"split": "test"}, min_score=-1)
    wait_for(browser, lambda d: _result_ids(d) == similar, "the more-like-this results")
    assert item_id not in similar and f"like item #{item_id}" in browser.find_element("id", "status").text
    browser.save_screenshot(str(tmp_path / "more-like-this.png"))

    browser.find_element("id", "filter").send_keys("{not json")
    browser.find_element("id", "search-button").click()
    wait_for(browser, lambda d: "not valid JSON" in d.find_element("id", "error").text, "the filter error")
