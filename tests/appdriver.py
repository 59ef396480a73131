"""Test driver of the app: run it on localhost (`atlas app`'s command) and look at it in
headless Chromium through Selenium. Lives with the tests, outside the library."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--hide-scrollbars"]


def chromium() -> str | None:
    """Path of a Chromium binary, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(db: Path, *, port: int | None = None, timeout: float = 90,
          command: list[str] | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the app on the atlas at `db` (by default `atlas app` of this interpreter; or
    `command`, e.g. another environment's `atlas`); yield its base URL; stop it afterwards."""
    port = port or free_port()
    base = command or [sys.executable, "-m", "atlas.cli"]
    proc = subprocess.Popen([*base, "app", "--db", str(db), "--port", str(port),
                             "--address", "127.0.0.1"], cwd=cwd,
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # atlas app and the streamlit it started
        proc.wait(timeout=20)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until the app at `url` answers its health check."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the app did not start on {url}")
        time.sleep(0.5)


@contextmanager
def browser(width: int = 1400, height: int = 1100):
    """A headless Chromium driven by Selenium (one browser session)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium(), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise RuntimeError("Chromium and chromedriver are needed (apt-get install chromium "
                           "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--window-size={width},{height}"]:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def load(driver, url: str, *, wait_for: str | None = None, timeout: float = 60) -> float:
    """Open `url` and wait until the app has finished running (and `wait_for` text shows);
    returns the seconds it took."""
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d) -> bool:
        html = d.page_source
        running = 'data-testid="stStatusWidget"' in html and "Running" in html
        rendered = 'data-testid="stMainBlockContainer"' in html and (
            "stAppSkeleton" not in html)
        return rendered and not running and (wait_for is None or wait_for in html)

    t0 = time.perf_counter()
    driver.get(url)
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(settled)
    return time.perf_counter() - t0


def render(url: str, *, png: Path | None = None, width: int = 1400, height: int = 1100,
           wait_for: str | None = None, timeout: float = 60) -> str:
    """Load a page in headless Chromium (through chromedriver), wait until the app has
    finished running (and `wait_for` text shows, if given); return the page's HTML,
    optionally saving a screenshot."""
    with browser(width, height) as driver:
        load(driver, url, wait_for=wait_for, timeout=timeout)
        time.sleep(1.5)  # let charts finish drawing
        html = driver.page_source
        if png is not None:
            driver.save_screenshot(str(png))
        return html
