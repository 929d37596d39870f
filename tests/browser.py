"""Headless Chromium for page tests: Debian's ``chromium`` driven by Playwright.

Nothing is downloaded: Playwright launches the system browser by path. Without chromium or
Playwright the tests skip locally (saying how to enable them) and fail in CI, where
``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENABLE = "apt-get install chromium, and pip install -e '.[dev]' for Playwright (.ci/run does both)"
WIDTH = 1400


def require_browser() -> None:
    """Skip (locally) or fail (in CI) when chromium or Playwright is missing."""
    problems = [] if CHROMIUM else ["chromium is not on PATH"]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("playwright is not installed")
    if problems:
        message = f"browser tests need a browser: {'; '.join(problems)}. To enable: {ENABLE}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Watched:
    """A page that records console errors, uncaught exceptions and every request it makes."""

    def __init__(self, context) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: str, fragment: str = ""):
        """Load a local file (with a URL fragment) and wait for it to settle."""
        self.page.goto(Path(path).resolve().as_uri() + fragment)
        self.page.wait_for_load_state("load")
        return self.page

    def check_clean(self) -> None:
        """No console errors, no page errors, and nothing fetched but the file itself."""
        assert self.errors == [], self.errors
        outside = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert outside == [], outside

    def screenshot(self, name: str, folder: Path) -> Path:
        """A full-page PNG into ``folder`` (and into $LAYERDRIFT_SCREENSHOTS when set)."""
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("LAYERDRIFT_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    def overflow(self) -> int:
        """How far the page is wider than the window, in CSS pixels (0: it fits)."""
        return self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
