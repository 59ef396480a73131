"""Read-only access for people: `atlas sql`, the app, notebooks.

Three layers keep a query from changing or leaking anything: the database is opened read-only;
DuckDB's external access (files, ATTACH, INSTALL/LOAD, COPY) is switched off and the setting
locked; and only single SELECT / EXPLAIN statements are accepted. `Limits` bound what an
accepted query costs: a memory limit and a thread cap on the connection, and per statement a
time limit (the statement is interrupted, the connection stays usable) and a cap on the rows
returned.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import pyarrow as pa

from atlas import access
from atlas.errors import AtlasError
from atlas.store import MIGRATIONS_TABLE, check_version

SAFE_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}
ALLOWED = {"SELECT", "EXPLAIN"}


@dataclass(frozen=True)
class Limits:
    """What one read-only query may cost."""

    timeout_s: float | None = 10.0
    """Statement time limit in seconds (None: none); a statement past it is interrupted."""
    max_rows: int | None = 10_000
    """Rows returned at most (None: all); a longer result is cut, and says so."""
    memory_limit: str = "2GB"
    """DuckDB's memory limit for the connection (a query needing more fails cleanly)."""
    threads: int = 2
    """DuckDB threads for the connection."""
    how_to_raise: str = "atlas sql --timeout SECONDS / --max-rows N / --memory-limit SIZE"
    """What the messages tell people to change (the CLI's flags, the app's variables)."""

    @classmethod
    def from_env(cls, **overrides) -> Limits:
        """Limits from ATLAS_SQL_TIMEOUT, ATLAS_SQL_MAX_ROWS, ATLAS_SQL_MEMORY and
        ATLAS_SQL_THREADS where set (0 means none for the first two), else `overrides`, else
        the defaults."""
        env = os.environ
        limits = replace(cls(), **overrides)
        try:
            if "ATLAS_SQL_TIMEOUT" in env:
                limits = replace(limits, timeout_s=float(env["ATLAS_SQL_TIMEOUT"]) or None)
            if "ATLAS_SQL_MAX_ROWS" in env:
                limits = replace(limits, max_rows=int(env["ATLAS_SQL_MAX_ROWS"]) or None)
            if "ATLAS_SQL_THREADS" in env:
                limits = replace(limits, threads=int(env["ATLAS_SQL_THREADS"]))
        except ValueError as exc:
            raise AtlasError(f"an ATLAS_SQL_* variable is not a number ({exc}); set "
                             "ATLAS_SQL_TIMEOUT in seconds and ATLAS_SQL_MAX_ROWS, "
                             "ATLAS_SQL_THREADS as integers") from None
        if "ATLAS_SQL_MEMORY" in env:
            limits = replace(limits, memory_limit=env["ATLAS_SQL_MEMORY"])
        return limits


@dataclass(frozen=True)
class Result:
    """A query's rows, and whether the row cap cut them."""

    table: pa.Table
    truncated: bool
    seconds: float
    max_rows: int | None = None

    def note(self) -> str | None:
        """One line saying the result was cut, or None."""
        if not self.truncated:
            return None
        return (f"showing the first {self.max_rows:,} rows; the result has more (add a "
                "LIMIT / WHERE, or raise the row cap)")


def sqlalchemy_url(path: Path | str) -> str:
    """The SQLAlchemy (duckdb-engine) URL of an atlas, for pandas.read_sql, BI tools, Streamlit."""
    return f"duckdb:///{Path(path).resolve()}"


def open_readonly(path: Path | str, limits: Limits | None = None) -> duckdb.DuckDBPyConnection:
    """Open an atlas read-only with external access locked off, under `limits`' memory limit
    and thread cap (default `Limits()`). Run queries with `run_query` for the time limit and
    the row cap."""
    path = Path(path)
    limits = limits or Limits()
    if not path.exists():
        raise AtlasError(f"{path} does not exist; build an atlas first with "
                         f"`atlas build --db {path}`")
    config: dict[str, str | bool | int | float | list[str]] = {
        **SAFE_CONFIG, "memory_limit": limits.memory_limit, "threads": limits.threads}
    try:
        # during a build's short writes this waits its turn (atlas.access), up to ATLAS_READER_WAIT
        con = access.open_when_free(
            lambda: duckdb.connect(str(path), read_only=True, config=config), path,
            wait_s=access.reader_wait(), defer_to_writers=True, what="a reader")
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise AtlasError(f"{path} is not a DuckDB database ({first}); "
                         "pass the atlas's --db path") from None
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
             .fetchall()}
    if MIGRATIONS_TABLE not in names:
        con.close()
        raise AtlasError(f"{path} holds no atlas; build one with `atlas build --db {path}`")
    check_version(con, path)
    return con


def check_query(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN statement, naming what was refused."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise AtlasError(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise AtlasError(f"send one statement at a time (got {len(statements)})")
    kind = statements[0].type.name
    if kind not in ALLOWED:
        raise AtlasError(f"refused a {kind} statement: the atlas is read-only here; only "
                         "SELECT (including WITH, DESCRIBE, SHOW) and EXPLAIN run")


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, limits: Limits | None = None
              ) -> Result:
    """Run one read-only query on its own cursor under `limits` (default `Limits()`): past the
    time limit it is interrupted and refused with a message naming the limit; the connection
    stays usable."""
    limits = limits or Limits()
    check_query(con, sql)
    cur = con.cursor()
    finished = threading.Event()
    guard = threading.Lock()

    def interrupt() -> None:
        with guard:
            if not finished.is_set():
                cur.interrupt()

    timer = threading.Timer(limits.timeout_s, interrupt) if limits.timeout_s else None
    t0 = time.perf_counter()
    try:
        if timer:
            timer.start()
        rel = cur.sql(sql)
        if rel is None:
            return Result(pa.table({}), False, time.perf_counter() - t0, limits.max_rows)
        cap = limits.max_rows
        table = (rel.limit(cap + 1) if cap else rel).to_arrow_table()
    except duckdb.InterruptException:
        raise AtlasError(f"the query was stopped at the {limits.timeout_s:g} s time limit; "
                         f"narrow it (WHERE, LIMIT) or raise the limit ({limits.how_to_raise})"
                         ) from None
    except duckdb.OutOfMemoryException:
        raise AtlasError(f"the query needed more than the {limits.memory_limit} memory limit; "
                         f"narrow it or raise the limit ({limits.how_to_raise})") from None
    except duckdb.PermissionException:
        raise AtlasError("refused: the query reads or writes files, attaches databases or "
                         "loads extensions, which the read-only atlas does not allow") from None
    except duckdb.Error as exc:
        raise AtlasError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        with guard:
            finished.set()
        if timer:
            timer.cancel()
        cur.close()
    truncated = bool(cap) and table.num_rows > cap
    if truncated:
        table = table.slice(0, cap)
    return Result(table, truncated, time.perf_counter() - t0, cap)


def query(con: duckdb.DuckDBPyConnection, sql: str, *, limits: Limits | None = None):
    """`run_query` for notebooks: a pandas DataFrame, with a logged note when the row cap cut
    it."""
    import logging

    result = run_query(con, sql, limits=limits)
    if result.truncated:
        logging.getLogger(__name__).warning("%s", result.note())
    return result.table.to_pandas()
