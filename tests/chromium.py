"""Debian's Chromium for the tests where a page is the product, driven by Playwright.

The flags keep it headless and quiet on a machine with no network but loopback (without
the background-networking ones it keeps trying hosts it cannot reach).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

EXECUTABLE = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=EXECUTABLE, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
