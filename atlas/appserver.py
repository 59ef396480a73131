"""Run the app on localhost and look at it in headless Chromium (tests, docs screenshots)."""

from __future__ import annotations

import shutil
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
def serve(db: Path, *, port: int | None = None, timeout: float = 90) -> Iterator[str]:
    """Start the app on the atlas at `db`; yield its base URL; stop it afterwards."""
    from atlas.cli import app_file

    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app_file()), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--", "--db", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not start on {url}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def render(url: str, *, png: Path | None = None, width: int = 1400, height: int = 1100,
           wait_for: str | None = None, timeout: float = 60) -> str:
    """Load a page in headless Chromium (through chromedriver), wait until the app has
    finished running (and `wait_for` text shows, if given); return the page's HTML,
    optionally saving a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

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
            driver.get(url)

            def settled(d) -> bool:
                html = d.page_source
                running = 'data-testid="stStatusWidget"' in html and "Running" in html
                rendered = 'data-testid="stMainBlockContainer"' in html and (
                    "stAppSkeleton" not in html)
                return rendered and not running and (wait_for is None or wait_for in html)

            WebDriverWait(driver, timeout, poll_frequency=0.5).until(settled)
            time.sleep(1.5)  # let charts finish drawing
            html = driver.page_source
            if png is not None:
                driver.save_screenshot(str(png))
            return html
        finally:
            driver.quit()
