"""Compare two atlases table by table, by content: every table and view of the first (but the
migration log) must hold the same rows in the second, ignoring what differs between any two
builds (run ids, times, the atlas's own path; `harvests.config` is compared without its `db`).
Exits 1 and names the tables that differ.

    python scripts/compare_atlases.py before.duckdb after.duckdb
"""

from __future__ import annotations

import sys

import duckdb

VOLATILE = {"run_id", "created_at", "applied_at", "seconds", "setup_seconds", "path",
            "config", "cooccurrence_file"}
"""Columns that differ between two builds of the same atlas (ids and times drawn per run, the
database's own path, the co-occurrence file's fresh name)."""
SKIPPED = {"atlas_migrations"}


def compare(a: str, b: str) -> list[str]:
    """The tables whose content differs (or that the second atlas lacks), with counts."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'a' AND "
        "table_type IN ('BASE TABLE', 'VIEW') ORDER BY 1").fetchall() if r[0] not in SKIPPED]
    bad = []
    for t in tables:
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'a' AND "
            "table_name = ? ORDER BY ordinal_position", [t]).fetchall() if r[0] not in VOLATILE]
        other = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'b' AND "
            "table_name = ?", [t]).fetchall()}
        if not set(cols) <= other:
            bad.append(f"{t}: columns missing in {b}: {sorted(set(cols) - other)}")
            continue
        sel = ", ".join(f'"{c}"' for c in cols)
        if t == "harvests":  # the build's settings, but for the database's own path
            sel += """, regexp_replace(config, '"db": *"[^"]*"', '')"""
        only_a, only_b, n = con.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {sel} FROM a.{t} EXCEPT ALL "
            f"SELECT {sel} FROM b.{t})), (SELECT count(*) FROM (SELECT {sel} FROM b.{t} "
            f"EXCEPT ALL SELECT {sel} FROM a.{t})), (SELECT count(*) FROM a.{t})").fetchone()
        status = "same" if only_a == only_b == 0 else "DIFFERS"
        print(f"{t:32} {n:>9,} rows  {status}"
              + (f" ({only_a} rows only in the first, {only_b} only in the second)"
                 if status != "same" else ""))
        if status != "same":
            bad.append(t)
    return bad


if __name__ == "__main__":
    differ = compare(sys.argv[1], sys.argv[2])
    print("identical content" if not differ else f"differ: {', '.join(differ)}")
    sys.exit(1 if differ else 0)
