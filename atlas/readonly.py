"""Read-only access for people: `atlas sql`, the app, notebooks.

Three layers keep a query from changing or leaking anything: the database is opened read-only;
DuckDB's external access (files, ATTACH, INSTALL/LOAD, COPY) is switched off and the setting
locked; and only single SELECT / EXPLAIN statements are accepted.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from atlas.errors import AtlasError
from atlas.store import MIGRATIONS_TABLE

SAFE_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}
ALLOWED = {"SELECT", "EXPLAIN"}


def sqlalchemy_url(path: Path | str) -> str:
    """The SQLAlchemy (duckdb-engine) URL of an atlas, for pandas.read_sql, BI tools, Streamlit."""
    return f"duckdb:///{Path(path).resolve()}"


def open_readonly(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Open an atlas read-only with external access locked off."""
    path = Path(path)
    if not path.exists():
        raise AtlasError(f"{path} does not exist; build an atlas first with "
                         f"`atlas build --db {path}`")
    try:
        con = duckdb.connect(str(path), read_only=True, config=SAFE_CONFIG)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        if "lock" in first.lower():
            raise AtlasError(f"{path} is being written by another process (a build?); open it "
                             "again when that has finished") from None
        raise AtlasError(f"{path} is not a DuckDB database ({first}); "
                         "pass the atlas's --db path") from None
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
             .fetchall()}
    if MIGRATIONS_TABLE not in names:
        con.close()
        raise AtlasError(f"{path} holds no atlas; build one with `atlas build --db {path}`")
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


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, limit: int | None = None) -> pa.Table:
    """Run one read-only query and return its result as an Arrow table."""
    check_query(con, sql)
    try:
        rel = con.sql(sql)
        if rel is None:
            return pa.table({})
        return (rel.limit(limit) if limit else rel).to_arrow_table()
    except duckdb.PermissionException:
        raise AtlasError("refused: the query reads or writes files, attaches databases or "
                         "loads extensions, which the read-only atlas does not allow") from None
    except duckdb.Error as exc:
        raise AtlasError(f"query failed: {str(exc).splitlines()[0]}") from None
