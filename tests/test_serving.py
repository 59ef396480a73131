"""Serving while building: readers (queries as `atlas sql` and the app run them, and the app's
pages) keep answering while `atlas analyze` writes the same atlas in another process, switch to
the new contents once a run commits, and stay on the old contents when the writer is killed
mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from atlas import access
from atlas.readonly import open_readonly, run_query
from tests.helpers import CliProcess

RUNS = "SELECT coalesce(string_agg(run_id, ',' ORDER BY run_id), '') FROM analysis_runs " \
       "WHERE analysis = 'galaxy'"


def analyze(db: Path, tmp: Path, stop_at: str | None = None) -> tuple[CliProcess, Path]:
    """`atlas analyze --analyses galaxy,lobes` in a child process (stopping for good at a
    commit point with `stop_at`); returns it and the file its stop is marked in."""
    marker = tmp / "reached"
    env = {**os.environ, "ATLAS_STOP_MARKER": str(marker)}
    env.pop("ATLAS_STOP_AT", None)
    if stop_at:
        env["ATLAS_STOP_AT"] = stop_at
    proc = CliProcess(["analyze", "--db", str(db), "--analyses", "galaxy,lobes", "--seed", "7"],
                      env=env, stdout=tmp / "analyze.log")
    return proc, marker


def read_runs(db: Path) -> str:
    """One reader's query, opening the atlas for it as the app's page runs and `atlas sql` do."""
    con = open_readonly(db)
    try:
        return run_query(con, RUNS).table.column(0)[0].as_py()
    finally:
        con.close()


def test_readers_answer_throughout_an_analyze_and_switch_at_its_commits(atlas_copy, tmp_path):
    db, _ = atlas_copy
    before = read_runs(db)
    seen, errors = [], []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(read_runs(db))
            except Exception as exc:  # every failure is what this test looks for
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    proc, _ = analyze(db, tmp_path)
    try:
        assert proc.wait(timeout=600) == 0, (tmp_path / "analyze.log").read_text()
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = read_runs(db)
    assert errors == []
    assert after != before and len(after.split(",")) == len(before.split(","))
    states = list(dict.fromkeys(seen))
    assert states[0] == before and states[-1] == after, "readers saw the old, then the new"
    assert len(seen) > 20, f"only {len(seen)} reads answered during the analyze"
    # one state per committed galaxy run (one per SAE), never a half-written one
    assert len(states) <= len(before.split(",")) + 1


def test_the_app_pages_answer_while_analyze_writes(atlas_copy, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    db, _ = atlas_copy
    monkeypatch.setenv("ATLAS_DB", str(db))
    app = str(Path(__file__).parent.parent / "app" / "streamlit_app.py")
    proc, _ = analyze(db, tmp_path)
    pages = 0
    try:
        while proc.poll() is None or pages < 2:
            for page in ("Galaxy", "Lobes", "Overview"):
                at = AppTest.from_file(app, default_timeout=120)
                at.query_params["page"] = page
                at.run()
                assert not at.exception, [e.value for e in at.exception]
                assert not at.error, [e.value for e in at.error]
                pages += 1
    finally:
        assert proc.wait(timeout=600) == 0, (tmp_path / "analyze.log").read_text()
    assert pages >= 3


def test_a_writer_killed_mid_write_leaves_readers_on_the_old_atlas(atlas_copy, tmp_path):
    db, _ = atlas_copy
    before = read_runs(db)
    proc, marker = analyze(db, tmp_path, stop_at="analysis")
    proc.wait_for(marker)
    # the writer holds the file inside its transaction: a reader waits for its turn ...
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(read_runs(db)))
    reader.start()
    time.sleep(1.0)
    assert not result, "a reader got in while the writer held the file"
    assert access.waiting_writer(db) == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=60)
    # ... and, the writer killed, reads the atlas as it was; the dead writer's note is ignored
    assert result == [before]
    assert access.waiting_writer(db) is None
    t0 = time.perf_counter()
    assert read_runs(db) == before
    assert time.perf_counter() - t0 < 5


def test_a_reader_out_of_patience_gets_one_clear_error(atlas_copy, monkeypatch):
    from atlas import store
    from atlas.errors import AtlasError

    db, _ = atlas_copy
    monkeypatch.setenv("ATLAS_READER_WAIT", "0.5")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True);"
        " time.sleep(60)"), str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AtlasError, match="being written by another process"):
            open_readonly(db)
    finally:
        holder.kill()
        holder.wait()
    store.connect(db, read_only=True).close()
