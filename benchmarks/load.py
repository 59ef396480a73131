"""Load on the app: page latency for N concurrent browser sessions, alone, while one more
session keeps running a runaway SQL query, and while `atlas analyze` writes the atlas, in one
run, on loopback.

    python benchmarks/load.py --db atlas.duckdb                     # 4 sessions, 3 rounds
    python benchmarks/load.py --db atlas.duckdb --sessions 8 --pages Overview,Lobes

Starts `atlas app` on 127.0.0.1 (the SQL page's time limit ATLAS_SQL_TIMEOUT, 5 s unless
--timeout), opens --sessions headless Chromium sessions that each load the --pages in turn for
--rounds rounds, and prints p50 / p95 / max seconds per page load: first with no other load
(the baseline), then while one more session reloads the SQL page with a cross join of two
100M-row ranges, which the time limit stops. The ratio of the loaded p95 to the baseline p95
is the figure to watch (goal <= 2); `heavy stopped` counts the runaway queries the time limit
interrupted meanwhile. Then the sessions load the pages again while `atlas analyze --analyses
--writer-analyses` rewrites the atlas in another process, over and over (serving while building:
pages wait for each short write, `atlas.access`): p95 during the writes against the baseline,
the analyze runs that committed meanwhile, and the page loads that showed an error (goal: 0).
Needs Chromium and chromedriver.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the app driver of the tests
from tests.appdriver import browser, load, serve  # noqa: E402

HEAVY = "SELECT count(*) FROM range(100000000) a, range(100000000) b"


ERRORS = ('data-testid="stException"', "stAlertContentError")
"""What a page that failed shows: a stack trace, or an error message."""


def session(url: str, pages: list[str], rounds: int, start: threading.Barrier,
            failed: list[str]) -> list[float]:
    """One browser loading each page `rounds` times; the seconds of every load (a load that
    shows an error is added to `failed`)."""
    with browser(1200, 900) as driver:
        load(driver, f"{url}/?page={pages[0]}", timeout=180)    # warm: the session exists
        start.wait()
        times = []
        for _ in range(rounds):
            for page in pages:
                times.append(load(driver, f"{url}/?page={page}", timeout=180))
                if any(e in driver.page_source for e in ERRORS):
                    failed.append(page)
        return times


def sessions(url: str, n: int, pages: list[str], rounds: int,
             failed: list[str] | None = None) -> list[float]:
    start = threading.Barrier(n)
    failed = [] if failed is None else failed
    with ThreadPoolExecutor(n) as pool:
        runs = [pool.submit(session, url, pages, rounds, start, failed) for _ in range(n)]
        return [t for r in runs for t in r.result()]


def writer(db: Path, analyses: str, stop: threading.Event, runs: list[float],
           errors: list[str]) -> None:
    """Run `atlas analyze` on the atlas again and again until told to stop."""
    while not stop.is_set():
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "atlas.cli", "analyze", "--db", str(db),
                               "--analyses", analyses], capture_output=True, text=True)
        if done.returncode == 0:
            runs.append(time.perf_counter() - t0)
        else:
            errors.append(done.stderr[-500:])


def heavy(url: str, stop: threading.Event, stopped: list[int], ready: threading.Event) -> None:
    """Keep one session running the runaway query until told to stop."""
    link = f"{url}/?page=SQL&sql={urllib.parse.quote(HEAVY)}"
    with browser(1200, 900) as driver:
        while not stop.is_set():
            ready.set()
            load(driver, link, wait_for="time limit", timeout=180)
            stopped.append(1)


def figures(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", default="Overview,Galaxy,Lobes")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="the SQL page's statement time limit (ATLAS_SQL_TIMEOUT)")
    parser.add_argument("--writer-analyses", default="galaxy,lobes",
                        help="what `atlas analyze` rewrites during the last phase")
    args = parser.parse_args(argv)
    pages = args.pages.split(",")
    with serve(args.db, env={"ATLAS_SQL_TIMEOUT": str(args.timeout)}) as url:
        base = sessions(url, args.sessions, pages, args.rounds)
        stop, ready, stopped = threading.Event(), threading.Event(), []
        runaway = threading.Thread(target=heavy, args=(url, stop, stopped, ready))
        runaway.start()
        ready.wait(300)
        time.sleep(1.0)   # the runaway query is running
        t0 = time.perf_counter()
        loaded = sessions(url, args.sessions, pages, args.rounds)
        span = time.perf_counter() - t0
        stop.set()
        runaway.join(300)
        stop, runs, errors, failed = threading.Event(), [], [], []
        writing = threading.Thread(target=writer, args=(args.db, args.writer_analyses, stop,
                                                        runs, errors))
        writing.start()
        time.sleep(3.0)   # the analyze is under way
        t0 = time.perf_counter()
        during = sessions(url, args.sessions, pages, args.rounds, failed)
        wspan = time.perf_counter() - t0
        stop.set()
        writing.join(600)
    b, lo, w = figures(base), figures(loaded), figures(during)
    print(f"{args.sessions} sessions x {args.rounds} rounds of {', '.join(pages)}; "
          f"SQL time limit {args.timeout:g} s")
    print(f"baseline        p50 {b[0]:.2f} s  p95 {b[1]:.2f} s  max {b[2]:.2f} s  "
          f"({len(base)} loads)")
    print(f"with heavy SQL  p50 {lo[0]:.2f} s  p95 {lo[1]:.2f} s  max {lo[2]:.2f} s  "
          f"({len(loaded)} loads in {span:.1f} s; heavy stopped {len(stopped)} times)")
    print(f"p95 loaded / baseline: {lo[1] / b[1]:.2f}x")
    print(f"during analyze  p50 {w[0]:.2f} s  p95 {w[1]:.2f} s  max {w[2]:.2f} s  "
          f"({len(during)} loads in {wspan:.1f} s; {len(runs)} analyze runs committed, "
          f"{len(errors)} failed; {len(failed)} page loads showed an error)")
    print(f"p95 during analyze / baseline: {w[1] / b[1]:.2f}x")


if __name__ == "__main__":
    main()
