"""The search page (`GET /`) driven in headless Chromium against a live server: text and image queries, the
metadata filter, min score and "more like this" show real results, and server errors are displayed.

Needs Debian's `chromium` + `chromium-driver` (scripts/install_browser.sh installs them; it is run here if
they are missing) and the `selenium` package (a dev dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_testing import LiveServer, make_settings

from service.app import create_app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALLER = Path(__file__).resolve().parents[2] / "scripts" / "install_browser.sh"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"]
K = 6


def _browser_available() -> str | None:
    """None when Chromium and its driver are (or could be made) present; else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if shutil.which("apt-get") is None:
        return "Chromium is not installed and this system has no apt-get to install it"
    done = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return f"could not install Chromium ({INSTALLER.name}): {done.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """A headless Chromium session through Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency (pip install -e .[dev])")
    reason = _browser_available()
    if reason:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(module_index: Path, checkpoint: Path) -> Iterator[LiveServer]:
    """The real app on a real port (the browser needs one)."""
    with LiveServer(create_app(make_settings(module_index, checkpoint))) as live:
        yield live


def _wait(driver, condition, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def _loaded_thumbnails(driver) -> list:
    """Result thumbnails whose image bytes have actually arrived and decoded."""
    images = driver.find_elements("css selector", "#results .image-result img")
    return [img for img in images if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)]


def _result_ids(driver) -> list[int]:
    return [int(el.get_attribute("data-id")) for el in driver.find_elements("css selector", "#results .result")]


def _api_search(server: LiveServer, **body) -> list[int]:
    response = httpx.post(f"{server.url}/v1/search", json={"k": K, **body}, timeout=30)
    response.raise_for_status()
    return [hit["id"] for hit in response.json()["results"]]


def test_text_query_shows_image_thumbnails_then_captions(browser, server, tmp_path):
    browser.get(server.url + "/")
    _wait(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(K))
    browser.find_element("id", "query-text").send_keys("a red circle above a blue square\n")
    _wait(browser, lambda d: len(_loaded_thumbnails(d)) == K, f"{K} loaded thumbnails")
    assert _result_ids(browser) == _api_search(server, text="a red circle above a blue square", target="image")
    scores = [float(s.text) for s in browser.find_elements("css selector", "#results .score")]
    assert scores == sorted(scores, reverse=True)
    browser.save_screenshot(str(tmp_path / "text-to-image.png"))

    browser.find_element("css selector", 'input[name="target"][value="text"]').click()  # re-runs the query
    _wait(browser, lambda d: d.find_elements("css selector", "#results .text-result"), "text results")
    captions = [el.text for el in browser.find_elements("css selector", "#results .text-result .caption")]
    assert len(captions) == K and all(captions)
    browser.save_screenshot(str(tmp_path / "text-to-text.png"))
    assert _result_ids(browser) == _api_search(server, text="a red circle above a blue square", target="text")


def test_image_query_finds_the_same_image_first(browser, server, dataset: Path, tmp_path):
    browser.get(server.url + "/")
    _wait(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    record = json.loads(dataset.read_text())["images"][3]
    picture = dataset.parent / "images" / record["filename"]
    # The real file picker (hidden <input type=file> behind the drop zone); choosing a file searches.
    browser.find_element("id", "query-file").send_keys(str(picture))
    _wait(browser, lambda d: len(_loaded_thumbnails(d)) > 0, "image-query results")
    first = browser.find_element("css selector", "#results .image-result")
    item = httpx.get(f"{server.url}/v1/items/{first.get_attribute('data-id')}", timeout=30).json()
    assert Path(item["uri"]).resolve() == picture.resolve()
    assert float(first.find_element("css selector", ".score").text) > 0.999  # itself, cosine ≈ 1
    browser.save_screenshot(str(tmp_path / "image-to-image.png"))


def test_server_errors_are_shown(browser, server, tmp_path):
    browser.get(server.url + "/")
    _wait(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    browser.execute_script("document.getElementById('k').max = ''")  # let the request reach the server
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys("100000")
    browser.find_element("id", "query-text").send_keys("a green triangle\n")
    error = _wait(browser, lambda d: d.find_element("id", "error").is_displayed() and d.find_element("id", "error"),
                  "the error box")
    assert error.text.startswith("422") and "k" in error.text
    assert not browser.find_elements("css selector", "#results .result")
    browser.save_screenshot(str(tmp_path / "error.png"))


def test_filter_min_score_and_more_like_this(browser, server, tmp_path):
    browser.get(server.url + "/")
    _wait(browser, lambda d: "model" in d.find_element("id", "info").text, "the info line")
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(K))
    browser.find_element("id", "filter").send_keys('{"split": "test"}')
    browser.find_element("id", "min-score").send_keys("-1")
    browser.find_element("id", "query-text").send_keys("a small blue circle\n")
    query = {"text": "a small blue circle", "target": "image", "filter": {"split": "test"}, "min_score": -1}
    expected = _api_search(server, **query)
    _wait(browser, lambda d: _result_ids(d) == expected, "the filtered results")
    assert expected and all(httpx.get(f"{server.url}/v1/items/{i}").json()["metadata"]["split"] == "test"
                            for i in expected)
    browser.save_screenshot(str(tmp_path / "filtered.png"))

    first = browser.find_element("css selector", "#results .result")
    item_id = int(first.get_attribute("data-id"))
    first.find_element("css selector", ".more-like").click()
    similar = _api_search(server, item_id=item_id, target="image", filter={"split": "test"}, min_score=-1)
    _wait(browser, lambda d: _result_ids(d) == similar, "the more-like-this results")
    assert item_id not in similar and f"like item #{item_id}" in browser.find_element("id", "status").text
    browser.save_screenshot(str(tmp_path / "more-like-this.png"))

    browser.find_element("id", "filter").send_keys("{not json")
    browser.find_element("id", "search-button").click()
    _wait(browser, lambda d: "not valid JSON" in d.find_element("id", "error").text, "the filter error")
