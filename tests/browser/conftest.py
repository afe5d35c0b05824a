"""A headless Chromium for the page tests (Debian's ``chromium`` and ``chromium-driver``).

``./dev test`` installs both when they are missing and it runs as root; without them the tests
fail saying so (they never skip silently).  ``PORTAL_TEST_CHROMIUM`` and
``PORTAL_TEST_CHROMEDRIVER`` point at other binaries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = os.environ.get("PORTAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PORTAL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


def _binary(path: str) -> str:
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if found is None:
        pytest.fail(
            f"{path} is missing: the page tests need Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; ./dev test does it as root)"
        )
    return found


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    """Where the browser saves what the page downloads."""
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def chrome(tmp_path: Path, downloads: Path) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (its own profile) recording the console and every request,
    saving downloads in ``downloads`` without asking."""
    options = webdriver.ChromeOptions()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.binary_location = _binary(CHROMIUM)
    for argument in ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
