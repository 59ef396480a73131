"""How processes share one atlas file while it is being built: the app and `atlas sql` keep
answering from the last committed atlas, and see each write once it commits.

DuckDB lets one process write a database file, or any number of processes read it, never both
at once. So a writer (`atlas build`, `atlas analyze`) holds the file only for each short write
(one transaction: a corpus, a harvest, an analysis run), and computes with the file closed or
open read-only beside the readers; readers (the app's page runs, `atlas sql`, exports) open it
per page or query. Nothing is copied: the atlas stays one file.

Turns are kept by the file locks DuckDB takes, plus one announcement: a writer that wants the
file writes its pid to `<db>.writer` before it waits for the readers to close, and a reader that
finds a live writer's announcement waits (up to its patience) before it opens the file, so a
busy app cannot starve a build. A reader that meets the lock waits and tries again: it answers
late during a write, never with an error, unless the write outlasts its patience
(`ATLAS_READER_WAIT`, 60 s unless set). A writer waits up to `ATLAS_WRITER_WAIT` (600 s) for
readers that keep the file open (a notebook's connection, say), saying what it waits for.
A writer killed mid-way leaves the atlas as its last commit left it, and its stale announcement
(a dead pid) is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

from atlas import store
from atlas.errors import AtlasBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

READER_WAIT_S = 60.0
"""How long a reader waits for a write to finish, unless ATLAS_READER_WAIT says otherwise."""
WRITER_WAIT_S = 600.0
"""How long a writer waits for readers to close the file, unless ATLAS_WRITER_WAIT says."""


def reader_wait() -> float:
    """A reader's patience in seconds (ATLAS_READER_WAIT, else READER_WAIT_S)."""
    return float(os.environ.get("ATLAS_READER_WAIT", READER_WAIT_S))


def writer_wait() -> float:
    """A writer's patience in seconds (ATLAS_WRITER_WAIT, else WRITER_WAIT_S)."""
    return float(os.environ.get("ATLAS_WRITER_WAIT", WRITER_WAIT_S))


def announcement(db: Path | str) -> Path:
    """`<db>.writer`: the pid of a writer waiting for or holding the file."""
    db = Path(db)
    return db.with_name(db.name + ".writer")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def waiting_writer(db: Path | str) -> int | None:
    """The pid of another live process that announced a write of `db`, or None."""
    try:
        pid = int(announcement(db).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and _alive(pid) else None


def is_lock_error(exc: BaseException) -> bool:
    """Whether DuckDB refused to open a file because another process holds its lock."""
    return isinstance(exc, duckdb.Error) and "lock" in str(exc).splitlines()[0].lower()


def open_when_free(open_file: Callable[[], T], db: Path | str, *, wait_s: float,
                   defer_to_writers: bool, what: str) -> T:
    """`open_file()`, tried again while another process holds the file's lock (and, with
    `defer_to_writers`, while another process has announced a write), for up to `wait_s`
    seconds; then one clear error naming the wait."""
    deadline = time.monotonic() + wait_s
    pause, said = 0.02, 0.0
    while True:
        writer = waiting_writer(db) if defer_to_writers else None
        if writer is None:
            try:
                return open_file()
            except AtlasBusy:
                pass
            except duckdb.Error as exc:
                if not is_lock_error(exc):
                    raise
        now = time.monotonic()
        if now >= deadline:
            raise AtlasBusy(
                f"{db} is being written by another process (a build?) and stayed busy for "
                f"{wait_s:g} s; open it again when that has finished (ATLAS_READER_WAIT / "
                "ATLAS_WRITER_WAIT set how long to wait)")
        if now - said > 10:
            log.info("%s is busy (%s); %s waits", db,
                     f"process {writer} is writing it" if writer else "another process has it "
                     "open", what)
            said = now
        time.sleep(min(pause, max(deadline - now, 0.0)))
        pause = min(pause * 2, 0.25)


@contextlib.contextmanager
def writing(db: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The atlas open for writing, for one step: announced first, then opened as soon as the
    readers have closed it (brought up to date), closed at the end so they can open it again.
    Keep the step short and its writes in one transaction."""
    db = Path(db)
    note = announcement(db)
    mine = False
    if waiting_writer(db) is None:
        note.write_text(str(os.getpid()))
        mine = True
    try:
        con = open_when_free(lambda: store.connect(db), db, wait_s=writer_wait(),
                             defer_to_writers=False, what="a write")
        try:
            yield con
        finally:
            con.close()
    finally:
        if mine:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(note.read_text().strip() or 0) == os.getpid():
                    note.unlink()


@contextlib.contextmanager
def reading(db: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The atlas open read-only for one step of a writer's work (computing what it will write),
    beside the other readers; it waits while another process writes."""
    con = open_when_free(lambda: store.connect(db, read_only=True), db, wait_s=writer_wait(),
                         defer_to_writers=True, what="a read")
    try:
        yield con
    finally:
        con.close()


def open_reader(db: Path | str) -> duckdb.DuckDBPyConnection:
    """The atlas open read-only for a reader that holds it for one task (an export), waiting
    its turn during a write (up to ATLAS_READER_WAIT)."""
    return open_when_free(lambda: store.connect(db, read_only=True), db, wait_s=reader_wait(),
                          defer_to_writers=True, what="a reader")
