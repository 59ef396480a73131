"""What every page of the app shares: the run's read-only connection, cached queries, and
the widgets that show a query with its SQL. The core pages (`app/streamlit_app.py`) and each
analysis's page (`atlas/analyses/<name>/page.py`) render through these."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from atlas import dashboard as q
from atlas.index import open_index
from atlas.readonly import Limits, open_readonly

T = TypeVar("T")

# This run's connections. Streamlit runs the script afresh on every interaction, each session's
# runs in its own thread, and a run closes its connections at its end (`close_all`), so the app
# never holds the file while a build wants to write it.
_RUN = threading.local()


def sql_limits() -> Limits:
    """Limits of the SQL page's queries (ATLAS_SQL_TIMEOUT etc.; 5 s and 10,000 rows unless
    set), so one person's query cannot hold the app."""
    return Limits.from_env(timeout_s=5.0, how_to_raise="the app's ATLAS_SQL_TIMEOUT, "
                           "ATLAS_SQL_MAX_ROWS, ATLAS_SQL_MEMORY variables, or `atlas sql`")


def _open() -> dict[str, Any]:
    if not hasattr(_RUN, "open"):
        _RUN.open = {}
    return _RUN.open


def connection(path: str):
    """The run's read-only connection to the atlas at `path`."""
    found = _open()
    if path not in found:
        found[path] = open_readonly(path, sql_limits())
    return found[path]


def close_all() -> None:
    """Close this run's connections (at the end of every run)."""
    found = _open()
    for con in found.values():
        con.close()
    found.clear()


def version(path: str) -> int:
    """Changes when the atlas is written (the file or its write-ahead log)."""
    p = Path(path)
    wal = p.with_name(p.name + ".wal")
    return max(p.stat().st_mtime_ns, wal.stat().st_mtime_ns if wal.exists() else 0)


@st.cache_resource(max_entries=32)
def _index(path: str, stamp: int, sae_id: str):
    return open_index(connection(path), Path(path), sae_id)


def feature_index(path: str, sae_id: str):
    """The SAE's FAISS index, opened once per change of the atlas."""
    return _index(path, version(path), sae_id)


@st.cache_data(show_spinner=False, max_entries=1024)
def _cached(path: str, stamp: int, module: str, name: str, *args):
    return getattr(importlib.import_module(module), name)(connection(path), *args)


def cached(path: str, query: Callable[..., T], *args) -> T:
    """A query's result (a function of `atlas.dashboard` or of an analysis's `queries`, called
    with the connection and `args`), cached until the atlas changes."""
    return _cached(path, version(path), query.__module__, query.__name__, *args)


def show_sql(shown: q.Shown) -> None:
    with st.expander("SQL"):
        st.code(shown.sql, language="sql")


def show_table(shown: q.Shown, title: str | None = None) -> None:
    """A titled table of a query's result, with its SQL."""
    if title:
        st.subheader(title)
    st.dataframe(shown.frame, hide_index=True)
    show_sql(shown)


def missing(what: str, how: str) -> None:
    st.info(f"This atlas has no {what} yet. Run `{how}` to compute it.")


def has_rows(db: str, table: str) -> bool:
    """Whether the atlas's `table` has rows."""
    return q.has_rows(connection(db), table)


def feature_names(db: str, sae: str) -> dict[int, str]:
    """Names of an SAE's features from every analysis page that gives them (`feature_names`
    in a page module: the explanations')."""
    from atlas import analyses

    out: dict[int, str] = {}
    for page in analyses.pages():
        if hasattr(page, "feature_names"):
            out.update(page.feature_names(db, sae))
    return out


def analysis_page(db: str, title: str, table: str, what: str, how: str) -> bool:
    """Header of a page that needs an analysis; whether its results exist (if not, says how
    to compute them)."""
    st.header(title)
    if not q.has_rows(connection(db), table):
        missing(what, how)
        return False
    found = q.definitions(connection(db), table)
    st.caption(f"definition: {', '.join(found)} (`analysis_runs.definition`; `atlas` = the "
               "atlas's own variant, described in the README)")
    spaces(db)
    return True


def spaces(db: str, sae: str | None = None) -> None:
    """Say which space decoder directions are in, where the atlas holds transcoders (of `sae`
    alone, when given)."""
    found = q.transcoders(connection(db))
    if sae is not None:
        found = {s: v for s, v in found.items() if s == sae}
    if found:
        st.caption("Decoder directions of " + "; ".join(
            f"{s} (a transcoder: reads {h}, writes {o})" for s, (h, o) in found.items())
            + " are in the MLP output they write; other SAEs' are in the residual stream "
            "they read.")


def choose_sae(db: str, key: str) -> str:
    """An SAE picker, starting at the page address's ?sae= when it names one."""
    ids = q.sae_ids(connection(db))
    wanted = st.query_params.get("sae")
    return st.selectbox("SAE", ids, key=key, index=ids.index(wanted) if wanted in ids else 0)


def pick_definition(frame: pd.DataFrame, help: str) -> str:
    """The definition to show, when the runs hold more than one (published first)."""
    found = sorted(frame["definition"].unique(), key=lambda d: (d == "atlas", d))
    if len(found) == 1:
        st.caption(f"definition: {found[0]} — {help}")
        return found[0]
    return st.radio("definition", found, horizontal=True, help=help)
