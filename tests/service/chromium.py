"""Headless Chromium through Selenium, shared by the web-page test and bench/page_check.py (the screenshot
in docs/ is taken by the same browser set-up the test drives).

Needs Debian's `chromium` + `chromium-driver` (scripts/install_browser.sh installs them; it is run here if
they are missing) and the `selenium` package (a dev dependency).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALLER = Path(__file__).resolve().parents[2] / "scripts" / "install_browser.sh"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"]


def browser_unavailable() -> str | None:
    """None when Chromium and its driver are (or could be made) present; else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if shutil.which("apt-get") is None:
        return "Chromium is not installed and this system has no apt-get to install it"
    done = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return f"could not install Chromium ({INSTALLER.name}): {done.stderr.strip().splitlines()[-1:]}"
    return None


def start_chromium(webdriver: Any) -> Any:
    """A headless Chromium session (`webdriver` is `selenium.webdriver`); the caller quits it."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver


def wait_for(driver: Any, condition: Any, what: str, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def loaded_thumbnails(driver: Any) -> list:
    """Result thumbnails whose image bytes have actually arrived and decoded."""
    images = driver.find_elements("css selector", "#results .image-result img")
    return [img for img in images
            if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)]
