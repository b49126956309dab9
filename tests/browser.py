"""Headless Debian Chromium through Selenium, for the tests that open HTML pages (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: flags that keep Chromium headless and off the network (this machine's network is closed)
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def headless_chrome(profile: Path, *extra_flags: str):
    """A Selenium Chrome driver on /usr/bin/chromium with a fresh profile; skips the test without it."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)
